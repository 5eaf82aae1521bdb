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
from mambadna.model.config import ModelConfig
from mambadna.components.device import resolve_device
from mambadna.components.schedule import warmup_cosine
from mambadna.errors import CheckpointError, InputError, TrainingError
from mambadna.io.files import atomic_dir, atomic_path
from mambadna.kernels import scan_saved_state_limit
from mambadna.model.encoder import MambaDNA
from mambadna.tokenizer import A, MASK, T

log = logging.getLogger("mambadna")

TRAINER_TENSORS = "trainer_state.safetensors"
TRAINER_JSON = "trainer_state.json"
METRICS = "metrics.jsonl"


@dataclass
class PretrainConfig:
    """Everything ``mambadna pretrain`` needs. ``model`` holds the encoder's shape.

    seq_len: bases per window; batch_size: global sequences per optimizer step
    (constant tokens per step = batch_size * seq_len); micro_batch_size: per
    device and forward pass (0 = batch_size / world size), the rest is reached
    by gradient accumulation.
    """

    genome: Optional[str] = None
    bam: Optional[str] = None
    bam_region: Optional[str] = None
    min_mapq: int = 0
    out: str = "runs/pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    seq_len: int = 1024
    batch_size: int = 8
    micro_batch_size: int = 0
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: Tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = -1  # -1: 5% of max_steps
    grad_clip: float = 1.0
    mlm_probability: float = 0.15
    seed: int = 0
    device: str = "auto"
    regions: Optional[str] = None
    val_contigs: Tuple[str, ...] = ()
    val_bed: Optional[str] = None
    val_fraction: float = 0.0
    max_n_frac: float = 0.1
    rc_augment: bool = False
    eval_every: int = 200
    eval_batches: int = 4
    save_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    resume: bool = False
    num_workers: int = 0
    gradient_checkpointing: bool = False
    seq_len_warmup: bool = False
    seq_len_warmup_start: int = 1024
    seq_len_warmup_steps: int = 0  # steps per warm-up stage (0: 10% of max_steps split over stages)
    bf16: bool = True
    progress: bool = True
    layer_chunk: int = -1  # > 0: each block trained in exact length chunks of this size; 0 off; -1 auto (CPU: 256)
    residual_bf16: bool = False  # keep the residual stream in bf16 on CUDA (halves checkpointed activations)
    scan_state_gib: float = -1.0  # GPU memory the scans' forwards may keep for their backwards; -1: 1/8 of
                                  # the device; 0: none (recomputed in backward: less memory, slower)
    stop_after: int = 0  # stop (with a checkpoint) after this step, to resume later; 0 = run to max_steps

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        self.val_contigs = tuple(self.val_contigs or ())
        self.betas = tuple(self.betas)
        if self.genome is None and self.bam is None:
            raise InputError(None, "pretrain needs a genome FASTA (or --bam)")
        if self.seq_len < 2:
            raise InputError(None, f"--seq-len must be at least 2, got {self.seq_len}")
        if self.batch_size < 1 or self.max_steps < 1:
            raise InputError(None, "--batch-size and --max-steps must be positive")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise InputError(None, f"--device must be auto, cpu or cuda, got {self.device!r}")

    @property
    def warmup(self) -> int:
        return self.warmup_steps if self.warmup_steps >= 0 else max(1, self.max_steps // 20)

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_toml(cls, path: str, **overrides: Any) -> "PretrainConfig":
        """Read a TOML file (top-level trainer keys, a [model] table), then apply
        ``overrides`` (None values are ignored)."""
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
        d = dict(d)
        model = dict(d.pop("model", {}) or {})
        mnames = {f.name for f in dataclasses.fields(ModelConfig)}
        tnames = {f.name for f in dataclasses.fields(cls)} - {"model"}
        for k, v in (overrides or {}).items():
            if v is None:
                continue
            (model if k in mnames and k not in tnames else d)[k] = v
        for k in list(d):
            if k in mnames and k not in tnames:
                model[k] = d.pop(k)
        unknown = set(d) - tnames
        if unknown:
            raise InputError(source, f"unknown option(s): {', '.join(sorted(unknown))}")
        try:
            return cls(model=ModelConfig.from_dict(model), **d)
        except (TypeError, ValueError) as e:
            if isinstance(e, InputError):
                raise
            raise InputError(source, str(e)) from None


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


def lr_at(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to cfg.lr, cosine decay to cfg.lr * min_lr_ratio at max_steps."""
    return cfg.lr * warmup_cosine(step, cfg.max_steps, cfg.warmup, cfg.min_lr_ratio)


def seq_len_schedule(cfg: PretrainConfig) -> List[Tuple[int, int]]:
    """[(first_step, seq_len), ...]: doubling from seq_len_warmup_start to seq_len."""
    if not cfg.seq_len_warmup or cfg.seq_len_warmup_start >= cfg.seq_len:
        return [(0, cfg.seq_len)]
    lens = []
    L = cfg.seq_len_warmup_start
    while L < cfg.seq_len:
        lens.append(L)
        L *= 2
    per = cfg.seq_len_warmup_steps or max(1, cfg.max_steps // 10 // len(lens))
    sched = [(i * per, L) for i, L in enumerate(lens)]
    sched.append((len(lens) * per, cfg.seq_len))
    return sched


# ---------------------------------------------------------------------------
# distributed helpers
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_opt: str) -> Tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        # NVLink multicast stays off (NVLS can take shared GPUs out of service)
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
        os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
        os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = torch.cuda.is_available() and device_opt != "cpu"
        if use_cuda:
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return _Dist(rank, world, local), device
    return _Dist(), resolve_device(device_opt)


CPU_LAYER_CHUNK = 256


def resolve_layer_chunk(opt: int, device: torch.device, seq_len: int) -> int:
    """-1 (auto): exact chunked blocks of 256 positions on CPU, where smaller
    working sets train 2-3x faster (2 x 64 model, 8 x 512: 3.6 s -> 1.3 s per
    step); off on GPU unless asked for (long windows: --layer-chunk)."""
    if opt >= 0:
        return opt
    return CPU_LAYER_CHUNK if device.type == "cpu" and seq_len > CPU_LAYER_CHUNK else 0


def _all_reduce(t: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


# ---------------------------------------------------------------------------
# trainer state (no pickle: tensors in safetensors, the rest in JSON)
def save_trainer_state(directory: Path, optimizer: torch.optim.Optimizer, step: int,
                       samples_seen: int, extra: Dict[str, Any]) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(directory / TRAINER_TENSORS))
    meta = {"step": step, "samples_seen": samples_seen, "param_groups": sd["param_groups"],
            "scalars": scalars, **extra}
    (directory / TRAINER_JSON).write_text(json.dumps(meta, indent=2) + "\n")


def load_trainer_state(directory: Path, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    path = directory / TRAINER_JSON
    try:
        meta = json.loads(path.read_text())
        step = int(meta["step"])
    except FileNotFoundError:
        raise CheckpointError(directory, f"no {TRAINER_JSON}: cannot resume") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(path, f"corrupt trainer state ({e})") from None
    tensors = load_state_dict(directory / TRAINER_TENSORS)
    state: Dict[int, Dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("state."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for k, v in meta.get("scalars", {}).items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(path, f"optimizer state does not match the model ({e})") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    meta["step"] = step
    return meta


def _checkpoints(out: Path) -> List[Path]:
    return sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
                  if p.name.split("-")[1].isdigit() else -1)


def _write_checkpoint(out: Path, model: MambaDNA, optimizer, step: int, cfg: PretrainConfig,
                      samples_seen: int, val: Optional[Dict[str, float]]) -> Path:
    target = out / f"checkpoint-{step:07d}"
    extra = {"pretrain": _jsonable(cfg.to_dict()), "step": step}
    with atomic_dir(target) as tmp:
        save_model(model, tmp, extra=extra)
        save_trainer_state(tmp, optimizer, step, samples_seen, {"val": val})
    for old in _checkpoints(out)[:-max(1, cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ---------------------------------------------------------------------------
def _make_datasets(cfg: PretrainConfig, seq_len: int, num_train: int):
    if cfg.bam is not None:
        from mambadna.components.sampler import ReadsDataset

        train = ReadsDataset(cfg.bam, seq_len=seq_len, region=cfg.bam_region, min_mapq=cfg.min_mapq,
                             seed=cfg.seed)
        return train, None
    from mambadna.components.sampler import SamplerConfig, WindowDataset

    scfg = SamplerConfig(seq_len=seq_len, seed=cfg.seed, max_n_frac=cfg.max_n_frac,
                         regions=cfg.regions, val_contigs=tuple(cfg.val_contigs),
                         val_bed=cfg.val_bed, val_fraction=cfg.val_fraction,
                         rc_augment=cfg.rc_augment)
    train = WindowDataset(cfg.genome, scfg, split="train", num_samples=num_train)
    has_val = bool(cfg.val_contigs or cfg.val_bed or cfg.val_fraction > 0)
    val = None
    if has_val:
        val = WindowDataset(cfg.genome, scfg, split="val",
                            num_samples=max(1, cfg.eval_batches * cfg.batch_size))
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
    limit = None if cfg.scan_state_gib < 0 else int(cfg.scan_state_gib * (1 << 30))
    with scan_saved_state_limit(limit):
        return _pretrain(cfg)


def _pretrain(cfg: PretrainConfig) -> Dict[str, Any]:
    dist_info, device = _init_distributed(cfg.device)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    objective = cfg.model.objective
    model = MambaDNA(cfg.model)
    model.gradient_checkpointing = cfg.gradient_checkpointing
    model.layer_chunk = resolve_layer_chunk(cfg.layer_chunk, device, cfg.seq_len)

    decay, no_decay = [], []
    for n_, p in model.named_parameters():
        (no_decay if p.ndim < 2 or n_.endswith(("A_log", "D", "bias")) or "norm" in n_ else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=cfg.betas, eps=1e-8)

    start_step, samples_seen = 0, 0
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
            raise CheckpointError(ck, "model shape in checkpoint differs from the requested one")
        state = load_state_dict(ck / WEIGHTS)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(ck / WEIGHTS, f"weights do not match the model ({str(e)[:200]})") from None
        meta = load_trainer_state(ck, optimizer)
        start_step, samples_seen = meta["step"], meta["samples_seen"]
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

    use_amp = device.type == "cuda" and cfg.bf16
    if use_amp and cfg.residual_bf16:
        model.residual_dtype = torch.bfloat16
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else \
        (lambda: torch.autocast("cpu", enabled=False))

    schedule = seq_len_schedule(cfg)
    tokens_per_step = cfg.batch_size * cfg.seq_len

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
            datasets[L] = (ObjectiveDataset(train, objective, cfg.seed, cfg.mlm_probability),
                           None if val is None else ObjectiveDataset(val, objective, cfg.seed + 1, cfg.mlm_probability))
        return datasets[L]

    # validate inputs up front on the final length (clear errors before any output)
    data_for(cfg.seq_len)
    if dist_info.main:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and (out / METRICS).exists():
            (out / METRICS).unlink()
        log.info(f"pretraining {objective} model: {model.num_parameters():,} parameters, "
                 f"{cfg.model.n_layers} layers x d_model {cfg.model.d_model}, "
                 f"{'bidirectional' if cfg.model.bidirectional else 'causal'}; seq_len {cfg.seq_len}, "
                 f"batch {cfg.batch_size}, {tokens_per_step:,} tokens/step; device {device}"
                 f"{f' x{dist_info.world}' if dist_info.world > 1 else ''}")

    from tqdm.auto import tqdm

    pbar = tqdm(total=cfg.max_steps, initial=start_step, desc="pretrain", unit="step",
                disable=not (cfg.progress and dist_info.main), dynamic_ncols=True, file=sys.stderr)
    metrics_f = open(out / METRICS, "a") if dist_info.main else None
    last_loss, last_val = float("nan"), None
    t_last, tok_acc = time.perf_counter(), 0
    last_ckpt = None
    model.train()
    try:
        end_step = min(cfg.max_steps, cfg.stop_after) if cfg.stop_after > 0 else cfg.max_steps
        for step in range(start_step, end_step):
            L = stage_at(step)
            B = max(1, tokens_per_step // L)  # constant tokens per optimizer step
            if B % dist_info.world:
                raise InputError(None, f"global batch {B} at length {L} is not divisible by {dist_info.world} GPUs")
            local_B = B // dist_info.world
            micro = cfg.micro_batch_size or local_B
            micro = min(micro, local_B)
            train_ds, _ = data_for(L)
            base = step * B + dist_info.rank * local_B  # data position is a function of step
            idx = list(range(base, base + local_B))
            batches = [idx[i:i + micro] for i in range(0, local_B, micro)]
            samples = [train_ds[i] for i in idx] if cfg.num_workers == 0 else None
            if samples is None:
                loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_ds, idx), batch_size=local_B,
                                                     num_workers=cfg.num_workers)
                inp_all, lab_all = next(iter(loader))
            else:
                inp_all = torch.stack([s[0] for s in samples])
                lab_all = torch.stack([s[1] for s in samples])
            n_tok = torch.tensor([(lab_all != -100).sum().item()], dtype=torch.float64, device=device)
            n_tok = _all_reduce(n_tok, dist_info).item()
            lr = lr_at(step, cfg)
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
            if not math.isfinite(step_loss):
                where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else ""
                raise TrainingError(f"non-finite loss ({step_loss}) at step {step + 1}; stopping{where}")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            samples_seen += B
            last_loss = step_loss
            tok_acc += B * L
            done = step + 1
            rec: Dict[str, Any] = {"step": done, "loss": step_loss, "lr": lr, "seq_len": L, "batch": B,
                                   "grad_norm": float(gnorm)}
            if done % cfg.log_every == 0 or done == cfg.max_steps:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                rec["tokens_per_s"] = tok_acc / max(now - t_last, 1e-9)
                if device.type == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                t_last, tok_acc = now, 0
                pbar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rec['tokens_per_s']:.3g}")
            val_ds = data_for(cfg.seq_len)[1]
            if val_ds is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps):
                vl = torch.utils.data.DataLoader(val_ds, batch_size=max(1, cfg.micro_batch_size or cfg.batch_size))
                last_val = evaluate(model, vl, device, autocast)
                rec.update(last_val)
            if metrics_f:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
            pbar.update(1)
            if (done % cfg.save_every == 0 or done == end_step) and dist_info.main:
                last_ckpt = _write_checkpoint(out, model, optimizer, done, cfg, samples_seen, last_val)
    finally:
        pbar.close()
        if metrics_f:
            metrics_f.close()
    if dist_info.main and end_step == cfg.max_steps:
        _write_final(out, model, cfg, last_val)
    if dist_info.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return {"step": end_step, "loss": last_loss, "val": last_val, "out": str(out)}


def _write_final(out: Path, model: MambaDNA, cfg: PretrainConfig, val) -> None:
    """Final model files in ``out`` (each written atomically) and the loss-curve PNG."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as tmp:
        save_model(model, tmp, extra={"pretrain": _jsonable(cfg.to_dict()), "step": cfg.max_steps,
                                      "val": val})
        for name in (WEIGHTS, CONFIG):
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
    plt.close(fig)


def model_info(directory: str) -> str:
    """Human-readable summary of a model directory: config, parameter count,
    training state."""
    from mambadna.components.checkpoint import load_model

    d = Path(directory)
    cfg = read_config(d)
    model = load_model(d)
    lines = [f"model: {d}", f"parameters: {model.num_parameters():,}", "config:"]
    lines += [f"  {k}: {v}" for k, v in cfg["model"].items()]
    if "step" in cfg:
        lines.append(f"trained steps: {cfg['step']}")
    if cfg.get("val"):
        lines.append("validation: " + ", ".join(f"{k}={v:.4g}" for k, v in cfg["val"].items()))
    if "head" in cfg:
        lines.append(f"head: {json.dumps(cfg['head'])}")
    ck = _checkpoints(d)
    if ck:
        lines.append(f"checkpoints: {', '.join(p.name for p in ck)}")
    return "\n".join(lines)


def launch_or_pretrain(cfg: PretrainConfig, gpus: Optional[int] = None) -> Dict[str, Any]:
    """Run :func:`pretrain` here, or with ``gpus`` > 1 re-launch this command
    under ``torchrun --nproc-per-node gpus`` (NVLink multicast kept off in the
    children's environment)."""
    if not gpus or gpus <= 1 or "RANK" in os.environ:
        return pretrain(cfg)
    import subprocess

    env = dict(os.environ, NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(cfg.out) / "launch_config.toml") as tmp:
        tmp.write_text(_to_toml(cfg.to_dict()))
        final = Path(cfg.out) / "launch_config.toml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
           "-m", "mambadna.cli", "pretrain", "--config", str(final)]
    rc = subprocess.call(cmd, env=env)
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

    top = [f"{k} = {val(v)}" for k, v in d.items() if k != "model" and v is not None]
    model = [f"{k} = {val(v)}" for k, v in d["model"].items() if v is not None]
    return "\n".join(top) + "\n\n[model]\n" + "\n".join(model) + "\n"
