"""Self-supervised pretraining on a reference genome (masked-LM or next-token).

``pretrain(cfg)`` is the one entry point; it runs on CPU, one GPU, or several
GPUs under ``torchrun`` (DistributedDataParallel over NCCL).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from mambadna.components.checkpoint import CONFIG, WEIGHTS, load_state_dict, read_config, save_model
from mambadna.model.config import MemoryConfig, ModelConfig
from mambadna.components.distributed import Dist, init_distributed, torchrun_command, torchrun_env
from mambadna.components.sampler import SamplerConfig
from mambadna.components.resume import (TRAINER_JSON, StopRequest, flat_options, load_optimizer_state,
                                        optimizer_state, rng_state, set_rng_state)
from mambadna.components.resume import load_trainer_state as read_trainer_state
from mambadna.components.resume import save_trainer_state as write_trainer_state
from mambadna.components.schedule import warmup_cosine, warmup_cosine_progress
from mambadna.errors import CheckpointError, InputError, Interrupted, TrainingError
from mambadna.io.files import atomic_dir, atomic_path, output_lock, publish_mode, jsonable
from mambadna.kernels import scan_saved_state_limit
from mambadna.model.encoder import MambaDNA
from mambadna.tokenizer import A, MASK, T

log = logging.getLogger("mambadna")

METRICS = "metrics.jsonl"


@dataclass(kw_only=True)
class DataConfig:
    """Where training windows come from and how they are batched."""

    genome: Optional[Any] = None
    """One FASTA, a list of FASTAs, or a list file (.txt/.list/.tsv) of them."""
    genome_weights: Optional[Any] = None
    """Several genomes: None / "length" (by usable length), "equal", or one weight each."""
    bam: Optional[str] = None
    """Train on the reads of this BAM instead of genome windows."""
    bam_region: Optional[str] = None
    """With ``bam``: only reads of this region (samtools syntax)."""
    min_mapq: int = 0
    """With ``bam``: skip reads of lower mapping quality."""
    seq_len: int = 1024
    """Bases per window."""
    batch_size: int = 8
    """Global sequences per optimizer step (tokens per step = batch_size * seq_len)."""
    micro_batch_size: int = 0
    """Per device and forward pass (0: batch_size / world size); the rest by gradient accumulation."""
    regions: Optional[str] = None
    """BED of regions to draw windows from."""
    val_contigs: Tuple[str, ...] = ()
    """Contigs held out for validation."""
    val_bed: Optional[str] = None
    """BED of validation regions."""
    val_fraction: float = 0.0
    """Hold out the last fraction of each contig for validation."""
    max_n_frac: float = 0.1
    """Windows with more N than this fraction are redrawn."""
    rc_augment: bool = False
    """Reverse-complement half of the training windows."""
    mlm_probability: float = 0.15
    """Masked-LM: fraction of nucleotide positions that carry the loss."""
    num_workers: int = 0
    """DataLoader workers preparing batches (0: in the training process)."""
    seq_len_warmup: bool = False
    """Start at ``seq_len_warmup_start`` and double up to ``seq_len``."""
    seq_len_warmup_start: int = 1024
    """First window length of the warm-up."""
    seq_len_warmup_steps: int = 0
    """Steps per warm-up stage (0: 10% of max_steps split over the stages)."""

    # options of genome sampling: they do nothing for reads
    GENOME_ONLY = ("genome", "regions", "val_contigs", "val_bed", "val_fraction", "max_n_frac", "rc_augment")

    def __post_init__(self) -> None:
        self.val_contigs = tuple(self.val_contigs or ())
        if self.genome is None and self.bam is None:
            raise InputError(None, "pretrain needs a genome FASTA (or --bam)")
        if self.bam is not None:  # options of genome sampling do nothing for reads: refuse them
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            unused = [n for n in self.GENOME_ONLY if getattr(self, n) not in (defaults[n], (), None)]
            if unused:
                raise InputError(self.bam, "with --bam, " + ", ".join("--" + n.replace("_", "-") for n in unused)
                                 + " would be ignored (they apply to genome windows): drop them")
        if isinstance(self.genome, (list, tuple)):
            self.genome = [str(g) for g in self.genome] if len(self.genome) != 1 else str(self.genome[0])
        if isinstance(self.genome_weights, str) and self.genome_weights not in ("length", "equal"):
            try:
                self.genome_weights = [float(w) for w in self.genome_weights.split(",")]
            except ValueError:
                raise InputError(None, f"--genome-weights must be 'length', 'equal' or numbers separated by "
                                       f"commas, got {self.genome_weights!r}") from None
        elif isinstance(self.genome_weights, (list, tuple)):
            self.genome_weights = [float(w) for w in self.genome_weights]

    def sampler(self, seq_len: int, seed: int) -> SamplerConfig:
        """The window sampler's settings at one window length."""
        return SamplerConfig(seq_len=seq_len, seed=seed, max_n_frac=self.max_n_frac, regions=self.regions,
                             val_contigs=self.val_contigs, val_bed=self.val_bed, val_fraction=self.val_fraction,
                             rc_augment=self.rc_augment)


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """The cosine ends at lr * min_lr_ratio at max_steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (not on norms, biases and embeddings)."""
    betas: Tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = -1
    """Linear warm-up steps (-1: 5% of max_steps)."""
    grad_clip: float = 1.0
    """Gradient-norm clipping."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)


# names accepted for compatibility with configs written before the sections (flat keys)
_ALIASES = {"gradient_checkpointing": "checkpoint_layers"}


@dataclass(kw_only=True)
class PretrainConfig:
    """Everything ``mambadna pretrain`` needs: the encoder's shape (``model``), the
    windows (``data``), the optimizer (``optim``), the memory trade-offs
    (``memory``) and the run itself. Defaults live here, once; the CLI passes only
    what the user gave. :meth:`of` builds one from flat option names."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Encoder shape."""
    data: DataConfig
    """Training (and validation) windows."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    memory: MemoryConfig = field(default_factory=lambda: MemoryConfig(layer_chunk=-1))
    """Activation memory against recompute (layer_chunk -1: off; 256 on a CPU without numba)."""
    out: str = "runs/pretrain"
    """Output folder (locked while the run writes it)."""
    max_steps: int = 1000
    """Optimizer steps (with ``max_minutes``: a cap, none unless given)."""
    max_minutes: float = 0.0
    """Wall-clock budget of the run in minutes, from its start (0: off). The run
    stops at the last step that fits, and the learning-rate schedule runs over
    the budget instead of the steps (warm-up over its first 5%, or over
    ``warmup_steps`` when given; cosine to the end), so it completes however fast
    the steps turn out to be. Resuming carries the time already spent."""
    seed: int = 0
    """Seed of the data order, masking and initialisation."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    eval_every: int = 200
    """Steps between validations (with a validation set)."""
    eval_batches: int = 4
    """Validation batches per evaluation."""
    save_every: int = 500
    """Steps between checkpoints."""
    keep_checkpoints: int = 2
    """Checkpoints kept (the newest)."""
    log_every: int = 10
    """Steps between metric rows."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out`` (same configuration)."""
    bf16: bool = True
    """bf16 autocast on CUDA."""
    progress: bool = True
    """Progress bar."""
    stop_after: int = 0
    """Stop (with a checkpoint) after this step, to resume later; 0: run to max_steps."""
    overwrite: bool = False
    """A fresh run may replace an earlier run's checkpoints and model in ``out``."""

    SECTIONS = {"model": ModelConfig, "data": DataConfig, "optim": OptimConfig, "memory": MemoryConfig}

    def __post_init__(self) -> None:
        for name, cls in self.SECTIONS.items():
            v = getattr(self, name)
            if isinstance(v, dict):
                setattr(self, name, ModelConfig.from_dict(v) if cls is ModelConfig else cls(**v))
        if self.data.seq_len < 2:
            raise InputError(None, f"--seq-len must be at least 2, got {self.data.seq_len}")
        if self.data.batch_size < 1 or self.max_steps < 1:
            raise InputError(None, "--batch-size and --max-steps must be positive")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(None, f"--device must be auto, cpu or cuda, got {self.device!r}")
        _validate_options(self)

    @property
    def warmup(self) -> int:  # steps; a time-budgeted run warms up by time (lr_at)
        w = self.optim.warmup_steps
        return w if w >= 0 else max(1, self.max_steps // 20)

    def to_dict(self) -> Dict[str, Any]:
        """Nested: the run's own keys, and one table per section."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in self.SECTIONS}
        for name in self.SECTIONS:
            d[name] = _table(getattr(self, name))
        return d

    def flat(self) -> Dict[str, Any]:
        """Every option by its own name, the model's and the sections' merged in
        (names are unique across sections)."""
        d = self.to_dict()
        out = {k: v for k, v in d.items() if k not in self.SECTIONS}
        for name in self.SECTIONS:
            out.update(d[name])
        return out

    @classmethod
    def of(cls, **options: Any) -> "PretrainConfig":
        """From flat option names (``PretrainConfig.of(genome="g.fa", seq_len=256,
        lr=3e-3, d_model=64)``), each routed to its section."""
        return cls.from_mapping({}, options)

    @classmethod
    def _section_of(cls) -> Dict[str, str]:
        where = {}
        for name, sec in cls.SECTIONS.items():
            for f in dataclasses.fields(sec):
                where[f.name] = name
        for f in dataclasses.fields(cls):
            if f.name not in cls.SECTIONS:
                where[f.name] = ""
        return where

    @classmethod
    def from_toml(cls, path: str, **overrides: Any) -> "PretrainConfig":
        """Read a TOML file (the run's keys at the top, ``[model]``, ``[data]``,
        ``[optim]``, ``[memory]`` tables; any option may also be given at the top
        by its own name), then apply ``overrides`` (None values are ignored)."""
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        p = Path(path)
        if not p.is_file():
            raise InputError(p, "config file not found")
        try:
            d = tomllib.loads(p.read_text())
        except Exception as e:
            raise InputError(p, f"not valid TOML ({e})") from None
        return cls.from_mapping(d, overrides, source=str(p))

    @classmethod
    def from_mapping(cls, d: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None,
                     source: Optional[str] = None) -> "PretrainConfig":
        """From a mapping as :meth:`from_toml` reads it (sections as tables or
        flat keys), then ``overrides`` by flat name (None values are ignored)."""
        where = cls._section_of()
        secs: Dict[str, Dict[str, Any]] = {name: {} for name in cls.SECTIONS}
        top: Dict[str, Any] = {}

        def put(k, v, section=None):
            k = _ALIASES.get(k, k)
            sec = where.get(k)
            if sec is None or (section is not None and sec != section):
                raise InputError(source, f"unknown option(s): {k}" if section is None
                                 else f"unknown option(s): [{section}] {k}")
            (secs[sec] if sec else top)[k] = v

        for k, v in dict(d).items():
            if k in cls.SECTIONS:
                v = _table(v)
                if not isinstance(v, dict):
                    raise InputError(source, f"'{k}' must be a table ([{k}] section), got {v!r}")
                for kk, vv in v.items():
                    put(kk, vv, k)
            else:
                put(k, v)
        # the file's own values are checked even where the command line overrides them
        _check_option_types(cls, top, source)
        for name, sec in cls.SECTIONS.items():
            _check_option_types(sec, secs[name], source, section=f"[{name}] " if name in d else "")
        for k, v in (overrides or {}).items():
            if v is not None:
                t = _table(v)
                if k in cls.SECTIONS and isinstance(t, dict):
                    secs[k].update(t)
                else:
                    put(k, v)
        if top.get("max_minutes") and "max_steps" not in top:
            top["max_steps"] = _NO_STEP_CAP  # the time budget ends the run
        try:
            return cls(model=ModelConfig.from_dict(secs["model"]), data=DataConfig(**secs["data"]),
                       optim=OptimConfig(**secs["optim"]),
                       memory=MemoryConfig(**{"layer_chunk": -1, **secs["memory"]}), **top)
        except (TypeError, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(source, str(e)) from None


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _check_value(tp, v) -> Optional[str]:
    """None when ``v`` fits the annotation ``tp``, else what was expected."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        if v is None and type(None) in args:
            return None
        errs = [_check_value(a, v) for a in args if a is not type(None)]
        return None if any(e is None for e in errs) else (errs[0] if errs else None)
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            return "a list"
        if origin is tuple and args and args[-1] is not Ellipsis and len(v) != len(args):
            return f"a list of {len(args)} values"
        item = args[0] if args else None
        for x in v:
            if item is not None and _check_value(item, x) is not None:
                return f"a list of {_type_name(item).replace('an ', '').replace('a ', '')}s"
        return None
    if tp is bool:
        return None if isinstance(v, bool) else _type_name(bool)
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else _type_name(int)
    if tp is float:
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) else _type_name(float)
    if tp is str:
        return None if isinstance(v, str) else _type_name(str)
    return None  # other annotations (nested configs): checked by their own constructors


def _check_option_types(cls, values: Dict[str, Any], source: Optional[str], section: str = "") -> None:
    """One clear line for a TOML value of the wrong type (``seq_len = "abc"``),
    instead of Python's own text from deep inside the run."""
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # pragma: no cover - unresolvable annotations: leave to the constructor
        return
    for k, v in values.items():
        if k in hints and v is not None:
            want = _check_value(hints[k], v)
            if want is not None:
                raise InputError(source, f"{section}option {k!r} must be {want}, got {v!r} "
                                         f"({type(v).__name__})")


def _validate_options(cfg: "PretrainConfig") -> None:
    """Every numeric option in range, checked where the options are parsed."""
    def num(sec, name, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, flag=None):
        v = getattr(sec, name)
        opt = flag or "--" + name.replace("_", "-")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise InputError(None, f"{opt} must be {'an integer' if integer else 'a number'}, got {v!r}")
        if not math.isfinite(v):
            raise InputError(None, f"{opt} must be a finite number, got {v}")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise InputError(None, f"{opt} must be {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and (v >= hi if hi_open else v > hi):
            raise InputError(None, f"{opt} must be {'<' if hi_open else '<='} {hi}, got {v}")

    o, d, m = cfg.optim, cfg.data, cfg.memory
    num(o, "lr", 0, lo_open=True)
    num(o, "min_lr_ratio", 0, 1)
    num(o, "weight_decay", 0)
    num(o, "grad_clip", 0, lo_open=True)
    num(o, "warmup_steps", -1, integer=True)
    num(cfg, "max_minutes", 0)
    if cfg.max_minutes and d.seq_len_warmup and not d.seq_len_warmup_steps:
        raise InputError(None, "--seq-len-warmup with --max-minutes needs --seq-len-warmup-steps "
                               "(the stages cannot be a fraction of an unknown step count)")
    num(d, "mlm_probability", 0, 1, lo_open=True, hi_open=True, flag="mlm_probability")
    num(d, "val_fraction", 0, 1, hi_open=True)
    num(d, "max_n_frac", 0, 1)
    num(d, "seq_len_warmup_start", 1, integer=True)
    for name in ("micro_batch_size", "num_workers", "seq_len_warmup_steps", "min_mapq"):
        num(d, name, 0, integer=True)
    num(m, "scan_state_gib", -1)
    num(m, "layer_chunk", -1, integer=True)
    for name in ("eval_every", "eval_batches", "save_every", "keep_checkpoints", "log_every"):
        num(cfg, name, 1, integer=True)
    for name in ("stop_after", "seed"):
        num(cfg, name, 0, integer=True)
    betas = o.betas
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
        raise InputError(None, f"betas must be two numbers in [0, 1), got {betas!r}")
    if d.micro_batch_size > d.batch_size:
        raise InputError(None, f"--micro-batch-size ({d.micro_batch_size}) is larger than --batch-size "
                               f"({d.batch_size})")
    if d.seq_len > 1 << 30:
        raise InputError(None, f"--seq-len {d.seq_len} is beyond 2^30")


# ---------------------------------------------------------------------------
# objectives
def mlm_mask(ids: torch.Tensor, gen: torch.Generator, prob: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """BERT masking on nucleotide positions: of ``prob`` of the A/C/G/T tokens,
    80% become [MASK], 10% a random nucleotide, 10% stay. ids: (L,) int64.
    Returns (inputs (L,), labels (L,) with -100 where no loss is taken)."""
    cand = (ids >= A) & (ids <= T)
    sel = (torch.rand(ids.shape, generator=gen) < prob) & cand
    labels = torch.where(sel, ids, torch.full_like(ids, -100))
    r = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[sel & (r < 0.8)] = MASK
    rnd = torch.randint(A, T + 1, ids.shape, generator=gen)
    swap = sel & (r >= 0.8) & (r < 0.9)
    inputs[swap] = rnd[swap]
    return inputs, labels


def clm_targets(ids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Next-token: inputs are ids, labels the next id (-100 at the end and on N/PAD)."""
    labels = torch.full_like(ids, -100)
    nxt = ids[1:]
    labels[:-1] = torch.where((nxt >= A) & (nxt <= T), nxt, torch.full_like(nxt, -100))
    return ids, labels


class ObjectiveDataset(torch.utils.data.Dataset):
    """Wraps a token dataset: sample i -> (inputs, labels), deterministic in (seed, i)."""

    def __init__(self, base, objective: str, seed: int, mlm_probability: float = 0.15):
        self.base, self.objective, self.seed, self.p = base, objective, seed, mlm_probability

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        ids = torch.as_tensor(self.base[i]).long()
        if self.objective == "mlm":
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + int(i) * 7919 + 17) % (2**63))
            return mlm_mask(ids, g, self.p)
        return clm_targets(ids)


_NO_STEP_CAP = 10**12


def lr_at(step: int, cfg: PretrainConfig, progress: Optional[float] = None) -> float:
    """Linear warm-up to cfg.optim.lr, cosine decay to cfg.optim.lr * min_lr_ratio at
    max_steps; with a time budget, over ``progress`` (elapsed / budget) instead."""
    if progress is None:
        return cfg.optim.lr * warmup_cosine(step, cfg.max_steps, cfg.warmup, cfg.optim.min_lr_ratio)
    w = cfg.optim.warmup_steps
    f = warmup_cosine_progress(progress, 0.05 if w < 0 else 0.0, cfg.optim.min_lr_ratio)
    return cfg.optim.lr * (min(f, (step + 1) / w) if w > 0 else f)


def seq_len_schedule(cfg: PretrainConfig) -> List[Tuple[int, int]]:
    """[(first_step, seq_len), ...]: doubling from seq_len_warmup_start to seq_len."""
    if not cfg.data.seq_len_warmup or cfg.data.seq_len_warmup_start >= cfg.data.seq_len:
        return [(0, cfg.data.seq_len)]
    lens = []
    L = cfg.data.seq_len_warmup_start
    while L < cfg.data.seq_len:
        lens.append(L)
        L *= 2
    per = cfg.data.seq_len_warmup_steps or max(1, cfg.max_steps // 10 // len(lens))
    sched = [(i * per, L) for i, L in enumerate(lens)]
    sched.append((len(lens) * per, cfg.data.seq_len))
    return sched


# ---------------------------------------------------------------------------
# distributed helpers
# the set-up is shared with sharded inference (mambadna.components.distributed)
_Dist = Dist


def _init_distributed(device_opt: str) -> Tuple[_Dist, torch.device]:
    return init_distributed(device_opt)


CPU_LAYER_CHUNK = 256


def resolve_layer_chunk(opt: int, device: torch.device, seq_len: int) -> int:
    """-1 (auto): off, unless asked for (long windows: --layer-chunk). On a CPU
    without numba, whose scan gradient is then the PyTorch reference, exact chunked
    blocks of 256 positions (smaller working sets train that 2-3x faster). With
    numba the whole-window compiled scan is faster than any chunking, whose carried
    states keep the reference (2 x 64 model, 8 x 512: 22.7k tokens/s against 3.4k)."""
    if opt >= 0:
        return opt
    if device.type != "cpu" or seq_len <= CPU_LAYER_CHUNK:
        return 0
    from mambadna.kernels import cpu_scan_available

    return 0 if cpu_scan_available() else CPU_LAYER_CHUNK


def _all_reduce(t: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------
# trainer state (no pickle: tensors in safetensors, the rest in JSON; components/resume.py)
def save_trainer_state(directory: Path, optimizer: torch.optim.Optimizer, step: int,
                       samples_seen: int, extra: Dict[str, Any]) -> None:
    tensors, meta = optimizer_state(optimizer)
    write_trainer_state(directory, {**tensors, **rng_state()},
                        {"step": step, "samples_seen": samples_seen, **meta, **extra})


def load_trainer_state(directory: Path, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    tensors, meta = read_trainer_state(directory)
    try:
        meta["step"] = int(meta["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(directory / TRAINER_JSON, f"corrupt trainer state ({e})") from None
    load_optimizer_state(optimizer, tensors, meta, directory / TRAINER_JSON)
    set_rng_state(tensors)
    return meta


def _checkpoints(out: Path) -> List[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
                  if p.name.split("-")[1].isdigit() else -1)


def _write_checkpoint(out: Path, model: MambaDNA, optimizer, step: int, cfg: PretrainConfig,
                      samples_seen: int, val: Optional[Dict[str, float]], elapsed_s: float, ended: bool = False,
                      origin: Optional[float] = None) -> Path:
    """Write ``checkpoint-<step>`` atomically (a full disk or an unwritable
    folder leaves the earlier checkpoints as they were), then prune old ones."""
    target = out / f"checkpoint-{step:07d}"
    bad = _first_non_finite(model)
    if bad is not None:  # never save a diverged model as a "good" checkpoint
        raise TrainingError(f"parameter {bad!r} is NaN/inf after step {step}: training diverged; not saving it "
                            f"(the last good checkpoint stays as it was; lower --lr or raise --warmup-steps)")
    extra = {"pretrain": jsonable(cfg.to_dict()), "step": step}
    try:
        with atomic_dir(target, replace=True) as tmp:
            save_model(model, tmp, extra=extra)
            save_trainer_state(tmp, optimizer, step, samples_seen, {"val": val, "elapsed_s": elapsed_s,
                               **({"ended_at_minutes": cfg.max_minutes} if ended else {}),
                               **({"schedule_origin_s": origin} if origin is not None else {})})
            publish_mode(tmp, 0o755)
    except OSError as e:
        prev = _checkpoints(out)
        keep = f"the previous checkpoint {prev[-1]} is intact" if prev else "no earlier checkpoint exists"
        raise TrainingError(f"cannot write checkpoint {target} ({e.strerror or e}); {keep}; "
                            f"free space or fix the folder, then continue with --resume") from None
    for old in _checkpoints(out)[:-max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _first_non_finite(model: torch.nn.Module) -> Optional[str]:
    for n_, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            return n_
    return None


# names a pretraining run writes into its folder (anything else there is the user's)
_RUN_FILES = (WEIGHTS, CONFIG, METRICS, "loss_curve.png", "launch_config.toml", "README.md")
# options that may change when resuming (they do not change what is computed, or extend it)
_RESUMABLE = {"out", "resume", "overwrite", "stop_after", "progress", "device", "num_workers", "save_every",
              "eval_every", "eval_batches", "log_every", "keep_checkpoints", "max_steps", "max_minutes",
              "checkpoint_layers",
              "layer_chunk", "residual_bf16", "scan_state_gib", "bf16", "micro_batch_size"}


def _check_run_folder(out: Path, cfg: PretrainConfig) -> None:
    """Before any work: ``out`` must be a folder this run may write. A fresh run
    refuses a folder holding another run's checkpoints or foreign files (unless
    ``overwrite``, which removes only the files a run writes); leftovers of a
    killed run (``.checkpoint-*.tmp``) are cleared."""
    if out.exists() and not out.is_dir():
        raise InputError(out, "--out exists and is a file, not a folder")
    for name in ("genome", "bam", "regions", "val_bed"):
        v = getattr(cfg.data, name, None)
        if isinstance(v, str) and v and os.path.realpath(v) == os.path.realpath(out):
            raise InputError(out, f"--out is the same path as the input {v}")
    if not out.is_dir():
        return
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(out, "cannot write --out: folder is not writable (permission denied)")
    for p in out.iterdir():  # we hold the lock: hidden temporaries are a killed run's leftovers
        if p.name.startswith(".") and p.name.endswith((".tmp", ".old")) and not p.name.endswith(".lock"):
            (shutil.rmtree if p.is_dir() else os.unlink)(p)
    if cfg.resume:
        return
    ckpts = _checkpoints(out)
    ours = [p for p in out.iterdir() if p.name in _RUN_FILES or p in ckpts or p.name.startswith("trainer_state")]
    foreign = [p.name for p in out.iterdir() if p not in ours and not p.name.startswith(".")]
    done = [p for p in ours if p.name in (WEIGHTS, "trainer_state.json") or p in ckpts]
    if not cfg.overwrite:
        if done:
            names = ", ".join(sorted(p.name for p in done)[-3:])
            raise InputError(out, f"holds another run's checkpoints or model ({names}); continue that run with "
                                  f"--resume, start afresh with --overwrite (deletes them), or choose another --out")
        if foreign:
            raise InputError(out, f"--out is not empty and not a pretraining run's folder (holds "
                                  f"{', '.join(sorted(foreign)[:3])}); choose another --out or pass --overwrite")
    for p in ours:
        if p.name == "launch_config.toml":
            continue  # the torchrun launcher's config for this very run
        (shutil.rmtree if p.is_dir() else os.unlink)(p)


def _table(v: Any) -> Any:
    """A section object (ModelConfig, DataConfig, ...) as its table; anything else as it is."""
    if isinstance(v, ModelConfig):
        return v.to_dict()
    return dataclasses.asdict(v) if isinstance(v, (DataConfig, OptimConfig, MemoryConfig)) else v


def _flat_options(d: Dict[str, Any]) -> Dict[str, Any]:
    """A saved run's options by flat (current) name, without the model's."""
    return {_ALIASES.get(k, k): v for k, v in flat_options(d).items() if k != "model"}


def _check_resumable(ck: Path, saved: Dict[str, Any], cfg: PretrainConfig, step: int) -> None:
    """The checkpoint must come from this configuration (data, objective,
    optimisation) and lie before --max-steps."""
    old = saved.get("pretrain")
    if isinstance(old, dict):
        old, now = _flat_options(old), _flat_options(jsonable(cfg.to_dict()))
        diff = []
        for k in sorted(set(old) & set(now)):
            if k in _RESUMABLE or old[k] == now[k]:
                continue
            if k in ("genome", "bam", "regions", "val_bed") and isinstance(old[k], str) and isinstance(now[k], str) \
                    and os.path.basename(old[k]) == os.path.basename(now[k]):
                continue  # the same file, perhaps given by another path
            diff.append(f"{k} (checkpoint {old[k]!r}, now {now[k]!r})")
        if diff:
            raise CheckpointError(ck, "was written by another configuration: " + "; ".join(diff[:4])
                                  + "; resume with the same options, or start afresh with --overwrite")
        if old.get("max_steps") not in (None, cfg.max_steps):
            log.warning("--max-steps changed from %s to %s on resume: the learning-rate schedule changes",
                        old.get("max_steps"), cfg.max_steps)
    if step > cfg.max_steps:
        raise CheckpointError(ck, f"is at step {step}, beyond --max-steps {cfg.max_steps}: nothing to resume "
                                  f"(raise --max-steps to train further)")


def _trim_metrics(path: Path, step: int) -> None:
    """Drop metric rows of steps after ``step`` (replayed after a resume)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a row cut by a kill
    with atomic_path(path) as tmp:
        tmp.write_text("".join(l + "\n" for l in keep))
        publish_mode(tmp)


def _describe_sample(ds, i: int, L: int) -> str:
    base = getattr(ds, "base", ds)
    try:
        if hasattr(base, "describe"):  # one genome or several: the file, contig and 0-based offset
            d = base.describe(i)
            return f"{d['contig']}:{d['start']}-{d['end']} ({d['strand']}) of {d['genome']}"
        if hasattr(base, "locate"):
            contig, start, strand, _ = base.locate(i)
            return f"{contig}:{start}-{start + L} ({strand}) of {base.genome.path}"
    except Exception:  # pragma: no cover - description only
        pass
    if hasattr(base, "path"):
        return f"read {i} of {base.path}"
    return f"sample {i}"


@torch.no_grad()
def _locate_non_finite(model, inputs, labels, idx, ds, L, autocast) -> str:
    """Which windows of a batch give a non-finite loss (recomputed one by one)."""
    was = model.training
    model.eval()
    bad = []
    try:
        for j in range(inputs.shape[0]):
            with autocast():
                lg = model(inputs[j:j + 1])
            lj = F.cross_entropy(lg.float().reshape(-1, lg.shape[-1]), labels[j:j + 1].reshape(-1),
                                 ignore_index=-100, reduction="sum")
            if not bool(torch.isfinite(lj)):
                bad.append(j)
    finally:
        model.train(was)
    if not bad:
        return (f"batch of {len(idx)} windows from {_describe_sample(ds, idx[0], L)}; each window alone is finite "
                f"(the sum overflowed)")
    if len(bad) == len(idx):
        return (f"every window of the batch (first: {_describe_sample(ds, idx[0], L)}): the weights diverged "
                f"(lower --lr or raise --warmup-steps)")
    return (f"window {_describe_sample(ds, idx[bad[0]], L)} (sample {idx[bad[0]]}"
            + (f"; {len(bad)} of {len(idx)} windows in the batch" if len(bad) > 1 else "") + ")")


# ---------------------------------------------------------------------------
def _make_datasets(cfg: PretrainConfig, seq_len: int, num_train: int):
    if cfg.data.bam is not None:
        from mambadna.components.sampler import ReadsDataset

        train = ReadsDataset(cfg.data.bam, seq_len=seq_len, region=cfg.data.bam_region, min_mapq=cfg.data.min_mapq,
                             seed=cfg.seed)
        return train, None
    from mambadna.components.sampler import MultiGenomeDataset, WindowDataset, expand_genomes

    scfg = cfg.data.sampler(seq_len, cfg.seed)
    genomes = expand_genomes(cfg.data.genome)
    has_val = bool(cfg.data.val_contigs or cfg.data.val_bed or cfg.data.val_fraction > 0)
    n_val = max(1, cfg.eval_batches * cfg.data.batch_size)
    if len(genomes) > 1:  # windows drawn across genomes; each holds out its own validation part
        weights = cfg.data.genome_weights
        if weights in (None, "length"):
            weights = None
        elif weights == "equal":
            weights = [1.0] * len(genomes)
        train = MultiGenomeDataset(genomes, scfg, split="train", num_samples=num_train, weights=weights)
        val = MultiGenomeDataset(genomes, scfg, split="val", num_samples=n_val, weights=weights) if has_val else None
        log.info("pretraining on %d genomes: %s", len(train.parts),
                 ", ".join(f"{n} ({w:.1%})" for n, w in zip(train.names, train.weights)))
        return train, val
    train = WindowDataset(genomes[0], scfg, split="train", num_samples=num_train)
    val = None
    if has_val:
        val = WindowDataset(genomes[0], scfg, split="val", num_samples=n_val)
    return train, val


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> Dict[str, float]:
    """Mean loss per predicted base (nats) and perplexity over ``loader``."""
    was = model.training
    model.eval()
    tot, n = 0.0, 0
    for inputs, labels in loader:
        inputs, labels = inputs.to(device), labels.to(device)
        with autocast():
            logits = model(inputs)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
        tot += loss.item()
        n += int((labels != -100).sum())
    model.train(was)
    m = tot / max(n, 1)
    return {"val_loss": m, "val_ppl": math.exp(min(m, 50)), "val_tokens": n}


def pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    """Pretrain a model as ``cfg`` says; write checkpoints and the final model to cfg.out.

    Returns a summary dict (final step, last train loss, last validation
    metrics, output directory).
    """
    limit = None if cfg.memory.scan_state_gib < 0 else int(cfg.memory.scan_state_gib * (1 << 30))
    with scan_saved_state_limit(limit):
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    dist_info, device = _init_distributed(cfg.device)
    out = Path(cfg.out)
    with contextlib.ExitStack() as stack:
        if dist_info.main:  # one writer per run folder: a second run gets a clear error
            stack.enter_context(output_lock(out, command="pretrain"))
            _check_run_folder(out, cfg)
        return _train(cfg, dist_info, device, out)


def _train(cfg: PretrainConfig, dist_info: "_Dist", device: torch.device, out: Path) -> Dict[str, Any]:
    t_start = time.perf_counter()  # a time budget counts set-up too
    torch.manual_seed(cfg.seed)
    objective = cfg.model.objective
    use_amp = device.type == "cuda" and cfg.bf16
    model = MambaDNA(cfg.model, dataclasses.replace(
        cfg.memory, layer_chunk=resolve_layer_chunk(cfg.memory.layer_chunk, device, cfg.data.seq_len),
        residual_bf16=use_amp and cfg.memory.residual_bf16))

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(("A_log", "D", "bias")) or "norm" in n_ else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.optim.lr, betas=cfg.optim.betas, eps=1e-8)

    start_step, samples_seen, spent, origin = 0, 0, 0.0, None  # spent: seconds of earlier sessions of this run
    resumed_from: Optional[Path] = None
    if cfg.resume:
        ckpts = _checkpoints(out) if out.is_dir() else []
        if not ckpts:
            raise CheckpointError(out, "--resume given but no checkpoint-* folder found")
        ck = ckpts[-1]
        saved = read_config(ck)
        try:
            saved_model = ModelConfig.from_dict(saved["model"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(ck / CONFIG, f"invalid model config ({e})") from None
        if saved_model != cfg.model:
            diff = [f"{k} {v!r} (now {getattr(cfg.model, k)!r})" for k, v in saved_model.to_dict().items()
                    if getattr(cfg.model, k) != v]
            raise CheckpointError(ck, "model shape in checkpoint differs from the requested one: "
                                      + ", ".join(diff[:4]))
        _check_resumable(ck, saved, cfg, int(saved.get("step", 0) or 0))
        state = load_state_dict(ck / WEIGHTS)
        from mambadna.components.checkpoint import check_state_dict

        check_state_dict(state, model.state_dict(), ck / WEIGHTS)
        model.load_state_dict(state)
        meta = load_trainer_state(ck, optimizer)
        start_step, samples_seen = meta["step"], meta["samples_seen"]
        spent = float(meta.get("elapsed_s") or 0.0)
        origin = meta.get("schedule_origin_s")
        ended = meta.get("ended_at_minutes")  # the budget this run already finished
        if cfg.max_minutes and (spent >= cfg.max_minutes * 60 or (ended and cfg.max_minutes <= ended)):
            raise CheckpointError(ck, f"has used {spent / 60:.1f} of --max-minutes {cfg.max_minutes:g}: nothing to "
                                      f"resume (raise --max-minutes to train further)")
        resumed_from = ck
        if dist_info.main:
            log.info(f"resuming from {ck} at step {start_step}")
    model.to(device)
    for st in optimizer.state.values():  # optimizer tensors follow the model's device
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)

    ddp_model = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else \
        (lambda: torch.autocast("cpu", enabled=False))

    schedule = seq_len_schedule(cfg)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len

    def stage_at(step):
        L = schedule[0][1]
        for s0, Ls in schedule:
            if step >= s0:
                L = Ls
        return L

    datasets: Dict[int, Any] = {}

    def data_for(L):
        if L not in datasets:
            train, val = _make_datasets(cfg, L, num_train=2**62)
            datasets[L] = (ObjectiveDataset(train, objective, cfg.seed, cfg.data.mlm_probability),
                           None if val is None else ObjectiveDataset(val, objective, cfg.seed + 1, cfg.data.mlm_probability))
        return datasets[L]

    # validate inputs up front on the final length (clear errors before any output)
    data_for(cfg.data.seq_len)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (out / METRICS).exists():
            (out / METRICS).unlink()
        if cfg.resume:
            _trim_metrics(out / METRICS, start_step)  # no duplicate rows for replayed steps
        log.info(f"pretraining {objective} model: {model.num_parameters():,} parameters, "
                 f"{cfg.model.n_layers} layers x d_model {cfg.model.d_model}, "
                 f"{'bidirectional' if cfg.model.bidirectional else 'causal'}; seq_len {cfg.data.seq_len}, "
                 f"batch {cfg.data.batch_size}, {tokens_per_step:,} tokens/step; device {device}"
                 f"{f' x{dist_info.world}' if dist_info.world > 1 else ''}")

    from tqdm.auto import tqdm

    budget = cfg.max_minutes * 60.0
    clock = _Budget(budget, origin) if budget else None
    pbar = tqdm(total=None if budget else cfg.max_steps, initial=start_step, desc="pretrain", unit="step",
                disable=not (cfg.progress and dist_info.main), dynamic_ncols=True, file=sys.stderr)
    metrics_f = open(out / METRICS, "a") if dist_info.main else None
    last_loss, last_val = float("nan"), None
    t_last, tok_acc = time.perf_counter(), 0
    last_ckpt = resumed_from
    model.train()
    stop = StopRequest().__enter__()  # SIGINT/SIGTERM: checkpoint at the next step boundary
    deferred = stop.deferred()  # the whole loop defers: each step boundary checks (across ranks too)
    deferred.__enter__()
    try:
        end_step = min(cfg.max_steps, cfg.stop_after) if cfg.stop_after > 0 else cfg.max_steps
        done, time_up = start_step, False
        for step in range(start_step, end_step):
            L = stage_at(step)
            B = max(1, tokens_per_step // L)  # constant tokens per optimizer step
            if B % dist_info.world:
                raise InputError(None, f"global batch {B} at length {L} is not divisible by {dist_info.world} GPUs")
            local_B = B // dist_info.world
            micro = cfg.data.micro_batch_size or local_B
            micro = min(micro, local_B)
            train_ds, _ = data_for(L)
            base = step * B + dist_info.rank * local_B  # data position is a function of step
            idx = list(range(base, base + local_B))
            batches = [idx[i:i + micro] for i in range(0, local_B, micro)]
            samples = [train_ds[i] for i in idx] if cfg.data.num_workers == 0 else None
            if samples is None:
                loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, idx), batch_size=local_B,
                                                     num_workers=cfg.data.num_workers)
                inp_all, lab_all = next(iter(loader))
            else:
                inp_all = torch.stack([s[0] for s in samples])
                lab_all = torch.stack([s[1] for s in samples])
            elapsed = spent + time.perf_counter() - t_start
            red = torch.tensor([(lab_all != -100).sum().item(), elapsed], dtype=torch.float64, device=device)
            n_tok, elapsed = _all_reduce(red, dist_info).tolist()  # one agreed clock across ranks
            progress = None if clock is None else clock.progress(step - start_step, elapsed)
            time_up = clock is not None and clock.last_step(step - start_step, elapsed)
            lr = lr_at(step, cfg, progress)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            off = 0
            for j, mb in enumerate(batches):
                inputs = inp_all[off:off + len(mb)].to(device, non_blocking=True)
                labels = lab_all[off:off + len(mb)].to(device, non_blocking=True)
                off += len(mb)
                sync = j == len(batches) - 1
                ctx = ddp_model.no_sync() if (dist_info.world > 1 and not sync) else contextlib.nullcontext()
                with ctx:
                    with autocast():
                        logits = ddp_model(inputs)
                    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum")
                    # DDP averages gradients over ranks: scale so the result is sum / global tokens
                    (loss * (dist_info.world / max(n_tok, 1.0))).backward()
                loss_sum += loss.detach().double()
            loss_sum = _all_reduce(loss_sum, dist_info)
            step_loss = (loss_sum / max(n_tok, 1.0)).item()
            gnorm = None
            if math.isfinite(step_loss):
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            if not math.isfinite(step_loss) or not math.isfinite(float(gnorm)):
                what = (f"non-finite loss ({step_loss})" if not math.isfinite(step_loss)
                        else f"non-finite gradient norm ({float(gnorm)}; loss {step_loss:.4g})")
                batch = _locate_non_finite(model, inp_all.to(device), lab_all.to(device), idx, train_ds, L, autocast)
                where = (f"last good checkpoint: {last_ckpt} (continue from it with --resume and a lower --lr)"
                         if last_ckpt else "no checkpoint was written yet")
                raise TrainingError(f"{what} at step {step + 1}, batch {batch}; stopping; {where}")
            optimizer.step()
            samples_seen += B
            last_loss = step_loss
            tok_acc += B * L
            done = step + 1
            final = done == cfg.max_steps or time_up  # the run's end (stop_after only pauses it)
            rec: Dict[str, Any] = {"step": done, "loss": step_loss, "lr": lr, "seq_len": L, "batch": B,
                                   "grad_norm": float(gnorm)}
            if done % cfg.log_every == 0 or final:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                rec["tokens_per_s"] = tok_acc / max(now - t_last, 1e-9)
                if device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                t_last, tok_acc = now, 0
                pbar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rec['tokens_per_s']:.3g}")
            val_ds = data_for(cfg.data.seq_len)[1]
            if val_ds is not None and (done % cfg.eval_every == 0 or final):
                vl = torch.utils.data.DataLoader(val_ds, batch_size=max(1, cfg.data.micro_batch_size or cfg.data.batch_size))
                last_val = evaluate(model, vl, device, autocast)
                rec.update(last_val)
            if metrics_f:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
            pbar.update(1)
            if clock is not None and done % cfg.log_every == 0:
                est = clock.steps_estimate(step - start_step, elapsed)
                pbar.total = None if est is None else est + start_step
            spent_now = spent + time.perf_counter() - t_start
            if (done % cfg.save_every == 0 or done == end_step or final) and dist_info.main:
                last_ckpt = _write_checkpoint(out, model, optimizer, done, cfg, samples_seen, last_val, spent_now,
                                              ended=time_up, origin=clock and clock.origin)
            if _stop_requested(stop, dist_info, device):
                if dist_info.main and (last_ckpt is None or last_ckpt.name != f"checkpoint-{done:07d}"):
                    last_ckpt = _write_checkpoint(out, model, optimizer, done, cfg, samples_seen, last_val, spent_now,
                                                  origin=clock and clock.origin)
                if dist_info.world > 1:
                    import torch.distributed as dist

                    dist.barrier()
                raise Interrupted(stop.signum or 15, f"stopped after step {done}"
                                  f"{'' if budget else f' of {cfg.max_steps}'}; checkpoint "
                                  f"{last_ckpt}; continue with the same command plus --resume")
            if final:
                break
    finally:
        deferred.__exit__(None, None, None)
        stop.__exit__(None, None, None)
        pbar.close()
        if metrics_f:
            metrics_f.close()
    finished = done == cfg.max_steps or time_up
    if dist_info.main and finished:
        try:
            _write_final(out, model, cfg, last_val, done)
        except OSError as e:
            raise TrainingError(f"cannot write the final model into {out} ({e.strerror or e}); the checkpoint "
                                f"{last_ckpt} is intact: free space, then run again with --resume") from None
        if math.isfinite(last_loss) and done >= 100 and last_loss > math.log(4) + 0.05:
            log.warning("final training loss %.3f is no better than guessing (ln 4 = 1.386): the run may have "
                        "collapsed (check --lr and the data)", last_loss)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {"step": done, "loss": last_loss, "val": last_val, "out": str(out)}


class _Budget:
    """A time-budgeted run's clock: where its schedule stands and when it takes its
    last step. Each rank sees the same (all-reduced) clock, so all agree. The
    schedule starts at the second step of the run (``origin``, seconds): set-up and
    the first step, which compiles the kernels, do not eat the warm-up. Step time is
    the mean since the second step of this session."""

    def __init__(self, seconds: float, origin: Optional[float] = None):
        self.seconds, self.origin, self.first = seconds, origin, None

    def progress(self, i: int, elapsed: float) -> float:
        """Fraction of the schedule done at the start of step ``i`` of this session."""
        if i == 1:
            self.first = elapsed
            self.origin = elapsed if self.origin is None else self.origin
        if self.origin is None:
            return 0.0
        return min(1.0, max(0.0, (elapsed - self.origin) / max(1e-9, self.seconds - self.origin)))

    def _per_step(self, i: int, elapsed: float) -> Optional[float]:
        if self.first is None or i < 2:
            return None
        return (elapsed - self.first) / (i - 1)

    def last_step(self, i: int, elapsed: float) -> bool:
        """Step ``i`` (of this session) starting at ``elapsed`` seconds is the last
        when the one after it would end past the budget."""
        if elapsed >= self.seconds:
            return True
        dt = self._per_step(i, elapsed)
        return dt is not None and elapsed + 2 * dt > self.seconds

    def steps_estimate(self, i: int, elapsed: float) -> Optional[int]:
        """Steps of this session in all, as the pace so far predicts."""
        dt = self._per_step(i, elapsed)
        return None if not dt else i + 1 + int(max(0.0, self.seconds - elapsed) / dt)


def _stop_requested(stop: StopRequest, dist_info: _Dist, device: torch.device) -> bool:
    """True on every rank when any rank got SIGINT/SIGTERM."""
    if dist_info.world <= 1:
        return stop.signum is not None
    flag = torch.tensor([0 if stop.signum is None else stop.signum], dtype=torch.int64, device=device)
    import torch.distributed as dist

    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and stop.signum is None:
        stop.signum = int(flag.item())
    return bool(flag.item())


def _write_final(out: Path, model: MambaDNA, cfg: PretrainConfig, val, step: int) -> None:
    """Final model files in ``out`` (each written atomically) and the loss-curve PNG."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        save_model(model, tmp, extra={"pretrain": jsonable(cfg.to_dict()), "step": step,
                                      "val": val})
        for name in (WEIGHTS, CONFIG, "README.md"):  # README.md: the model card save_model writes
            os.replace(Path(tmp) / name, out / name)
    try:
        plot_loss_curve(out / METRICS, out / "loss_curve.png")
    except Exception as e:  # plotting must never lose a finished run
        log.warning(f"could not draw the loss curve: {e}")
    log.info(f"wrote {out / WEIGHTS}, {out / CONFIG} and {out / 'loss_curve.png'}")


def plot_loss_curve(metrics_path: Path, png: Path) -> None:
    """Training loss (and validation loss where present) against step, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, label="train")
    v = [r for r in rows if "val_loss" in r]
    if v:
        ax.plot([r["step"] for r in v], [r["val_loss"] for r in v], "o-", label="validation")
    ax.axhline(math.log(4), color="grey", ls="--", lw=0.8, label="uniform (ln 4)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per base (nats)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(png, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
        publish_mode(tmp)  # mkstemp makes 0600; the other outputs are 0644
    plt.close(fig)


def launch_or_pretrain(cfg: PretrainConfig, gpus: Optional[int] = None) -> Dict[str, Any]:
    """Run :func:`pretrain` here, or with ``gpus`` > 1 re-launch this command
    under ``torchrun --nproc-per-node gpus`` (NVLink multicast kept off in the
    children's environment)."""
    if not gpus or gpus <= 1 or "RANK" in os.environ:
        return pretrain(cfg)
    import subprocess

    env = torchrun_env(gpus)  # NVLink multicast off in every child
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(cfg.out) / "launch_config.toml") as tmp:
        tmp.write_text(_to_toml(cfg.to_dict()))
        final = Path(cfg.out) / "launch_config.toml"
    cmd = torchrun_command(gpus, ["pretrain", "--config", str(final)])
    import signal

    proc = subprocess.Popen(cmd, env=env)
    prev = {}

    def forward(signum, frame):  # torchrun passes it on; the workers checkpoint at the next step
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            prev[sig] = signal.signal(sig, forward)
    try:
        rc = proc.wait()
    finally:
        for sig, h in prev.items():
            signal.signal(sig, h)
    if rc in (130, 143, -2, -15):
        raise Interrupted(signal.SIGINT if rc in (130, -2) else signal.SIGTERM,
                          f"the workers stopped with a checkpoint in {cfg.out}; continue with --resume")
    if rc != 0:
        raise TrainingError(f"torchrun exited with status {rc}")
    return {"out": cfg.out}


def _to_toml(d: Dict[str, Any]) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = [f"{k} = {val(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    for name, sec in d.items():
        if isinstance(sec, dict):
            lines += ["", f"[{name}]"] + [f"{k} = {val(v)}" for k, v in sec.items() if v is not None]
    return "\n".join(lines) + "\n"
