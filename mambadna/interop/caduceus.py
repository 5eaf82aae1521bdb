"""Caduceus checkpoints (kuleshov-group/caduceus, Hugging Face layout) in and out of mambadna.

A Caduceus folder holds ``config.json`` (``model_type: "caduceus"``, the fields of
``CaduceusConfig``) and the weights of ``CaduceusForMaskedLM`` as
``model.safetensors`` (tied tensors possibly stored once) or ``pytorch_model.bin``
(read with ``torch.load(weights_only=True)`` only: never a full unpickling).
mambadna builds its encoder the way Caduceus does (RMSNorm pre-norm blocks, BiMamba
mixers whose two directions share the in/out projections, reverse direction = the
causal Mamba run on the flipped sequence, RCPS embedding and LM head tied to the
embedding) with the same token ids, so the weights map one to one.

CaduceusConfig field -> mambadna (anything else is refused with one line naming
config.json and the field):

===========================  =====================================================
d_model                      mixer width: ModelConfig.d_model = d_model (Ph) or
                             2 * d_model (PS: residual stream of fwd + RC halves)
n_layer                      n_layers
vocab_size,                  vocab_size = vocab_size rounded up to the multiple
pad_vocab_size_multiple      (12 ids -> 16 rows): the padding rows are kept, so the
                             logits have Caduceus' 16 columns; must be >= 12
ssm_cfg.d_state / d_conv /   same (dt_rank "auto" = ceil(d_model / 16)); expand must
expand / dt_rank / conv_bias be a whole number
ssm_cfg.dt_min / dt_max /    same ModelConfig fields (initialisation only)
dt_init_floor
ssm_cfg.dt_init / dt_scale / initialisation or kernel choice only: accepted, kept
use_fast_path                for the way back
ssm_cfg.bias = true          refused: mambadna's in/out projections have no bias
ssm_cfg other keys           refused (e.g. Mamba-2 settings)
rms_norm = false             refused: mambadna's blocks use RMSNorm
norm_epsilon                 norm_eps
initializer_cfg              initializer_range (initialisation only)
bidirectional                bidirectional
bidirectional_strategy       "add" (or null) only; "ew_multiply" refused
bidirectional_weight_tie     must be true with bidirectional (mambadna shares the
                             in/out projections between the directions)
rcps                         rc_equivariant
complement_map               with rcps: must be the character tokenizer's (A<->T,
                             C<->G, every other id fixed); ignored without rcps
residual_in_fp32             numerics only, see below
fused_add_norm               numerics only for Ph; for PS it changes the function,
                             see below
===========================  =====================================================

Generic ``PretrainedConfig`` keys (architectures, torch_dtype, generation and label
settings, ``auto_map``, ...) do not change the encoder and are kept for the way back.
A ``tokenizer_config.json`` whose ``characters`` are not A C G T N is refused (the
ids would not be mambadna's).

Numerics. ``residual_in_fp32``: mambadna keeps the residual stream in fp32 (unless
training asks for ``MemoryConfig.residual_bf16``), which is what Caduceus computes
with its fp32 weights whatever this flag says (the flag only matters for a model
cast to bf16/fp16).
``fused_add_norm``: for Ph the fused kernel computes the same sums (residual add,
then RMSNorm in fp32) as the unfused path, so the outputs agree to rounding. For
PS, Caduceus' fused ``RCPSMambaBlock`` passes the *second* half of the residual
stream to the forward copy of the mixer and the first half to the RC copy, i.e. it
swaps the halves at every layer (the unfused path does not). That is still
RC-equivariant, and for an even number of layers it equals mambadna's unfused
stack with every other layer (0, 2, 4, ...) mirrored: norm weight and the
projections' model-side channels reversed, and the two directions' conv, x_proj,
dt_proj, A_log and D exchanged (``_mirror_layer``; an involution, so the way back
applies it again). An odd number of layers would need an LM head untied from the
embedding and is refused, as is fused PS without bidirectional mixers. The released
PS models have an even number of layers (16 for the 131k windows, 4 for the 1k ones).

Hidden states: a converted model's ``hidden_states(ids)`` (last block, final norm)
is Caduceus' backbone output ``last_hidden_state``; for PS both are (B, L, 2 x
d_model) in the same layout (forward half, then the RC half flipped along length
and channels). Caduceus' ``output_hidden_states`` list holds the *inputs* of each
block in its Add->Norm->Mixer form, i.e. the previous block's mixer output, which
is ``hidden_states(ids, i, final_norm=False) - hidden_states(ids, i - 1,
final_norm=False)`` in mambadna (the embedding for i = 0); with fused_add_norm it
also ends with the final-normed output. Fused PS models: after an odd number of
blocks Caduceus' residual stream holds mambadna's two halves in swapped order
(after an even number, and at the output, they agree).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from mambadna.io.weights import CONFIG, load_state_dict
from mambadna.errors import CheckpointError
from mambadna.model.config import ModelConfig
from mambadna.model.encoder import MambaDNA, _complement_perm
from mambadna.tokenizer import VOCAB_SIZE

Tensor = torch.Tensor
PathLike = Union[str, os.PathLike]

MODEL_TYPE = "caduceus"
SAFETENSORS = "model.safetensors"
WEIGHT_FILES = (SAFETENSORS, "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
CHARACTERS = ["A", "C", "G", "T", "N"]

# CaduceusConfig's own fields (configuration_caduceus.py @0060a6d) and their defaults there
CADUCEUS_DEFAULTS: Dict[str, Any] = {
    "d_model": 2560, "n_layer": 64, "vocab_size": 50277, "ssm_cfg": None, "rms_norm": True,
    "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8, "norm_epsilon": 1e-5,
    "initializer_cfg": None, "bidirectional": True, "bidirectional_strategy": "add",
    "bidirectional_weight_tie": True, "rcps": False, "complement_map": None,
}
# keyword arguments of mamba_ssm's Mamba (v1, mamba_simple.py) that ssm_cfg may set, with their defaults
SSM_DEFAULTS: Dict[str, Any] = {
    "d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto", "dt_min": 0.001, "dt_max": 0.1,
    "dt_init": "random", "dt_scale": 1.0, "dt_init_floor": 1e-4, "conv_bias": True, "bias": False,
    "use_fast_path": True,
}
# transformers.PretrainedConfig's generic keys: bookkeeping, generation, labels; none changes the encoder
HF_FIELDS = frozenset("""
    model_type architectures auto_map transformers_version torch_dtype use_bfloat16 return_dict output_hidden_states
    output_attentions torchscript tf_legacy_loss pruned_heads tie_word_embeddings chunk_size_feed_forward
    is_encoder_decoder is_decoder cross_attention_hidden_size add_cross_attention tie_encoder_decoder max_length
    min_length do_sample early_stopping num_beams num_beam_groups diversity_penalty temperature top_k top_p
    typical_p repetition_penalty length_penalty no_repeat_ngram_size encoder_no_repeat_ngram_size bad_words_ids
    num_return_sequences output_scores return_dict_in_generate forced_bos_token_id forced_eos_token_id
    remove_invalid_values exponential_decay_length_penalty suppress_tokens begin_suppress_tokens finetuning_task
    id2label label2id num_labels problem_type tokenizer_class prefix bos_token_id pad_token_id eos_token_id
    sep_token_id decoder_start_token_id task_specific_params classifier_dropout
""".split())
_DIRECTION_PARAMS = ("A_log", "D", "conv.weight", "conv.bias", "dt_proj.weight", "dt_proj.bias", "x_proj.weight")


# --------------------------------------------------------------------------- config
def is_caduceus_dir(path: PathLike) -> bool:
    """True when ``path`` is a folder whose config.json says ``model_type: "caduceus"``."""
    p = Path(path) / CONFIG
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("model_type") == MODEL_TYPE


def _read_raw_config(src: Path) -> Dict[str, Any]:
    if not src.is_dir():
        raise CheckpointError(src, "model directory does not exist")
    path = src / CONFIG
    if not path.is_file():
        raise CheckpointError(src, f"no {CONFIG}: not a Caduceus model folder")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("model_type") != MODEL_TYPE:
        mt = d.get("model_type") if isinstance(d, dict) else None
        raise CheckpointError(path, f"not a Caduceus config (model_type {mt!r}, expected 'caduceus')")
    return d


def _refuse(path: Path, field: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(path, f"field {field} = {json.dumps(value)} cannot be mapped: {why}")


def _whole(path: Path, field: str, v: Any, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v) or int(v) < minimum:
        raise _refuse(path, field, v, f"expected a whole number >= {minimum}")
    return int(v)


def _number(path: Path, field: str, v: Any, positive: bool = True) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (positive and not v > 0):
        raise _refuse(path, field, v, "expected a positive number")
    return float(v)


def _flag(path: Path, field: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _refuse(path, field, v, "expected true or false")
    return v


def complement_ids(vocab_size: int) -> List[int]:
    """The character tokenizer's complement of each id (A<->T, C<->G, others fixed)."""
    return _complement_perm(vocab_size).tolist()


def _check_complement_map(path: Path, cm: Any, vocab: int) -> None:
    """Ids missing from the map are their own complement (Caduceus pads it so);
    the map must then be the character tokenizer's."""
    if not isinstance(cm, dict):
        raise _refuse(path, "complement_map", cm, "rcps needs a complement map {id: complement id}")
    try:
        m = {int(k): int(v) for k, v in cm.items()}
    except (TypeError, ValueError):
        raise _refuse(path, "complement_map", cm, "ids must be whole numbers") from None
    if any(not 0 <= k < vocab for k in m) or [m.get(i, i) for i in range(vocab)] != complement_ids(vocab):
        raise _refuse(path, "complement_map", cm,
                      "not the character tokenizer's complement (A7<->T10, C8<->G9, every other id fixed)")


def _parse_config(d: Dict[str, Any], path: Path) -> Tuple[ModelConfig, Dict[str, Any]]:
    """Validate a Caduceus config.json; return the ModelConfig and the conversion info."""
    unknown = sorted(k for k in d if k not in CADUCEUS_DEFAULTS and k not in HF_FIELDS and not k.startswith("_"))
    if unknown:
        raise CheckpointError(path, f"unknown field {unknown[0]} (not a CaduceusConfig field): refusing to guess "
                                    "what it changes")
    g = {k: d.get(k, v) for k, v in CADUCEUS_DEFAULTS.items()}
    notes: List[str] = []
    d_model = _whole(path, "d_model", g["d_model"])
    n_layer = _whole(path, "n_layer", g["n_layer"])
    pad = _whole(path, "pad_vocab_size_multiple", g["pad_vocab_size_multiple"])
    vocab0 = _whole(path, "vocab_size", g["vocab_size"])
    if vocab0 < VOCAB_SIZE:
        raise _refuse(path, "vocab_size", vocab0, f"fewer than the character tokenizer's {VOCAB_SIZE} ids")
    vocab = vocab0 + (-vocab0) % pad
    if vocab != VOCAB_SIZE:
        notes.append(f"vocabulary of {vocab} rows ({VOCAB_SIZE} character ids, padded to a multiple of {pad}): "
                     f"the logits keep all {vocab} columns, as in Caduceus")
    if not _flag(path, "rms_norm", g["rms_norm"]):
        raise _refuse(path, "rms_norm", False, "LayerNorm blocks; mambadna's blocks use RMSNorm")
    eps = _number(path, "norm_epsilon", g["norm_epsilon"])
    bidirectional = _flag(path, "bidirectional", g["bidirectional"])
    rcps = _flag(path, "rcps", g["rcps"])
    fused = _flag(path, "fused_add_norm", g["fused_add_norm"])
    residual_fp32 = _flag(path, "residual_in_fp32", g["residual_in_fp32"])
    tie = _flag(path, "bidirectional_weight_tie", g["bidirectional_weight_tie"])
    strategy = g["bidirectional_strategy"]
    if bidirectional:
        if strategy not in (None, "add"):
            why = ("mambadna's BiMamba adds the two directions" if strategy == "ew_multiply"
                   else "unknown strategy (Caduceus knows 'add' and 'ew_multiply')")
            raise _refuse(path, "bidirectional_strategy", strategy, why)
        if not tie:
            raise _refuse(path, "bidirectional_weight_tie", False,
                          "untied in/out projections of the two directions; mambadna shares them")
    if rcps:
        _check_complement_map(path, g["complement_map"], vocab)
    ssm = g["ssm_cfg"] if g["ssm_cfg"] is not None else {}
    if not isinstance(ssm, dict):
        raise _refuse(path, "ssm_cfg", ssm, "expected an object of Mamba settings")
    bad = sorted(set(ssm) - set(SSM_DEFAULTS))
    if bad:
        raise _refuse(path, f"ssm_cfg.{bad[0]}", ssm[bad[0]], "not a setting of Mamba (v1), the mixer mambadna "
                                                             "implements")
    s = {**SSM_DEFAULTS, **ssm}
    if _flag(path, "ssm_cfg.bias", s["bias"]):
        raise _refuse(path, "ssm_cfg.bias", True, "mambadna's in/out projections have no bias")
    d_state = _whole(path, "ssm_cfg.d_state", s["d_state"])
    d_conv = _whole(path, "ssm_cfg.d_conv", s["d_conv"])
    expand = _whole(path, "ssm_cfg.expand", s["expand"])
    dt_rank = math.ceil(d_model / 16) if s["dt_rank"] == "auto" else _whole(path, "ssm_cfg.dt_rank", s["dt_rank"])
    conv_bias = _flag(path, "ssm_cfg.conv_bias", s["conv_bias"])
    dt_min = _number(path, "ssm_cfg.dt_min", s["dt_min"])
    dt_max = _number(path, "ssm_cfg.dt_max", s["dt_max"])
    dt_floor = _number(path, "ssm_cfg.dt_init_floor", s["dt_init_floor"])
    if s["dt_init"] not in ("random", "constant"):
        raise _refuse(path, "ssm_cfg.dt_init", s["dt_init"], "expected 'random' or 'constant'")
    _number(path, "ssm_cfg.dt_scale", s["dt_scale"])
    _flag(path, "ssm_cfg.use_fast_path", s["use_fast_path"])
    init = g["initializer_cfg"] if g["initializer_cfg"] is not None else {}
    if not isinstance(init, dict):
        raise _refuse(path, "initializer_cfg", init, "expected an object")
    init_range = _number(path, "initializer_cfg.initializer_range", init.get("initializer_range", 0.02))

    mirror = False
    if rcps and fused:
        if not bidirectional:
            raise _refuse(path, "fused_add_norm", True, "with rcps and causal mixers Caduceus' fused RCPS block "
                                                        "swaps the residual halves at every layer, which mambadna "
                                                        "represents only with bidirectional mixers")
        if n_layer % 2:
            raise _refuse(path, "fused_add_norm", True,
                          f"with rcps and an odd n_layer ({n_layer}) Caduceus' fused RCPS block (it swaps the residual "
                          "halves at every layer) equals mambadna's stack only with an LM head untied from the "
                          "embedding")
        mirror = True
        notes.append("fused_add_norm with rcps: Caduceus' fused RCPS block swaps the residual halves at every layer; "
                     "represented exactly by mirroring layers 0, 2, 4, ... (channels reversed, directions exchanged)")
    elif fused:
        notes.append("fused_add_norm: same sums as the unfused path (add, then RMSNorm in fp32)")
    notes.append(f"residual_in_fp32 {str(residual_fp32).lower()}: mambadna keeps the residual stream in fp32, as "
                 "Caduceus does with fp32 weights")
    try:
        mc = ModelConfig(d_model=2 * d_model if rcps else d_model, n_layers=n_layer, d_state=d_state, d_conv=d_conv,
                         expand=expand, dt_rank=dt_rank, n_groups=1, bidirectional=bidirectional,
                         rc_equivariant=rcps, vocab_size=vocab, norm_eps=eps, dt_min=dt_min, dt_max=dt_max,
                         dt_init_floor=dt_floor, conv_bias=conv_bias, initializer_range=init_range)
    except ValueError as e:
        raise CheckpointError(path, f"config cannot be mapped: {e}") from None
    variant = "Caduceus-PS" if rcps else ("Caduceus-Ph" if bidirectional else "Caduceus (causal Mamba)")
    info = {"format": "caduceus", "variant": variant, "caduceus_config": d, "mirrored_layers": mirror,
            "notes": notes}
    return mc, info


def _check_tokenizer(src: Path) -> Optional[str]:
    p = src / "tokenizer_config.json"
    if not p.is_file():
        return None
    try:
        t = json.loads(p.read_text())
    except ValueError as e:
        raise CheckpointError(p, f"not valid JSON ({e})") from None
    chars = t.get("characters") if isinstance(t, dict) else None
    if chars is not None and list(chars) != CHARACTERS:
        raise CheckpointError(p, f"field characters = {json.dumps(chars)} cannot be mapped: ids 7.. would not be "
                                 "mambadna's A C G T N")
    n = t.get("model_max_length") if isinstance(t, dict) else None
    return f"tokenizer model_max_length {n}" if isinstance(n, int) else None


def caduceus_model_config(src: PathLike, raw: Optional[Dict[str, Any]] = None) -> Tuple[ModelConfig, Dict[str, Any]]:
    """Validate a Caduceus folder's config.json (no weights read): (ModelConfig, info).
    ``raw``: the config.json already read."""
    src = Path(src)
    raw = _read_raw_config(src) if raw is None else raw
    mc, info = _parse_config(raw, src / CONFIG)
    tok = _check_tokenizer(src)
    if tok:
        info["notes"].append(tok)
    info["source"] = str(src.resolve())
    return mc, info


def caduceus_read_config(directory: PathLike, raw: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What :func:`~mambadna.components.checkpoint.read_config` returns for a Caduceus
    folder: the mapped model config under 'model' and the conversion info under
    'converted_from' (``in_memory: true``). ``raw``: config.json as already read."""
    mc, info = caduceus_model_config(directory, raw)
    for name in WEIGHT_FILES:
        if (Path(directory) / name).is_file():
            info["weights"] = name
            break
    info["in_memory"] = True
    return {"model": mc.to_dict(), "converted_from": info}


# --------------------------------------------------------------------------- weights
def _short(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    pick = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), lines[0] if lines else "")
    return f"{type(e).__name__}: {pick}"[:200]


def _torch_load_plain(path: Path) -> Dict[str, Tensor]:
    """A pickled state dict, through torch's restricted unpickler only."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for any non-tensor object, others for corrupt files
        raise CheckpointError(path, f"not a plain-tensor checkpoint: torch.load(weights_only=True) refused it "
                                    f"({_short(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a dict of tensors")
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, Tensor):
            raise CheckpointError(path, f"entry {k!r} is a {type(v).__name__}, not a tensor")
    return dict(obj)


def _load_one(path: Path) -> Dict[str, Tensor]:
    if path.name.endswith(".safetensors"):
        return load_state_dict(path)
    return _torch_load_plain(path)


def read_caduceus_weights(src: PathLike) -> Tuple[Dict[str, Tensor], Path]:
    """(state dict with Caduceus' names, the file read): model.safetensors first, then
    pytorch_model.bin (sharded ``*.index.json`` forms too)."""
    src = Path(src)
    path = next((src / n for n in WEIGHT_FILES if (src / n).is_file()), None)
    if path is None:
        raise CheckpointError(src, "no weights (model.safetensors or pytorch_model.bin) in the Caduceus folder")
    if not path.name.endswith(".index.json"):
        state = _load_one(path)
    else:
        try:
            wmap = json.loads(path.read_text())["weight_map"]
            shards = sorted(set(wmap.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(path, f"not a weight index ({type(e).__name__}: {e})") from None
        state = {}
        for shard in shards:
            if Path(shard).name != shard:
                raise CheckpointError(path, f"shard {shard!r} outside the folder")
            state.update(_load_one(src / shard))
    if not any(k.startswith("caduceus.") for k in state) and any(k.startswith("backbone.") for k in state):
        # saved from the bare Caduceus model (base_model_prefix "caduceus"): no LM head, tied anyway
        state = {("caduceus." + k if k.startswith("backbone.") else k): v for k, v in state.items()}
    return state, path


def _names(mc: ModelConfig, fused: bool) -> List[Tuple[str, Optional[str]]]:
    """(Caduceus name, mambadna name) of every tensor of a ``CaduceusForMaskedLM``;
    tied Caduceus tensors share one mambadna name; the complement buffers map to None."""
    rcps = mc.rc_equivariant
    b = "caduceus.backbone."
    mixer = "mixer.submodule." if rcps else "mixer."
    norm = "norm.submodule.weight" if rcps and not fused else "norm.weight"
    out: List[Tuple[str, Optional[str]]] = []
    if rcps:
        out += [(b + "embeddings.word_embeddings.complement_map", None),
                (b + "embeddings.word_embeddings.embedding.weight", "embedding.weight")]
    else:
        out.append((b + "embeddings.word_embeddings.weight", "embedding.weight"))
    dirs = [("mamba_fwd", "fwd")] + ([("mamba_rev", "rev")] if mc.bidirectional else [])
    for i in range(mc.n_layers):
        lay, mlay = f"{b}layers.{i}.", f"layers.{i}."
        for cd, md in dirs:
            p, q = f"{lay}{mixer}{cd}.", f"{mlay}mixer.{md}."
            out += [(p + "A_log", q + "A_log"), (p + "D", q + "D"), (p + "conv1d.weight", q + "conv.weight")]
            if mc.conv_bias:
                out.append((p + "conv1d.bias", q + "conv.bias"))
            out += [(p + "dt_proj.weight", q + "dt_proj.weight"), (p + "dt_proj.bias", q + "dt_proj.bias"),
                    (p + "in_proj.weight", mlay + "mixer.in_proj.weight"),
                    (p + "out_proj.weight", mlay + "mixer.out_proj.weight"),
                    (p + "x_proj.weight", q + "x_proj.weight")]
        out.append((lay + norm, mlay + "norm.weight"))
    out.append((b + ("norm_f.submodule.weight" if rcps and not fused else "norm_f.weight"), "norm_f.weight"))
    if rcps:
        out += [("lm_head.complement_map", None), ("lm_head.lm_head.weight", "embedding.weight")]
    else:
        out.append(("lm_head.weight", "embedding.weight"))
    return out


def _mirror_layer(state: Dict[str, Tensor], i: int) -> None:
    """In place: layer i computed on the RC-flipped stream (see the module doc). An involution."""
    p = f"layers.{i}."
    state[p + "norm.weight"] = state[p + "norm.weight"].flip(0)
    state[p + "mixer.in_proj.weight"] = state[p + "mixer.in_proj.weight"].flip(1)
    state[p + "mixer.out_proj.weight"] = state[p + "mixer.out_proj.weight"].flip(0)
    for name in _DIRECTION_PARAMS:
        f, r = f"{p}mixer.fwd.{name}", f"{p}mixer.rev.{name}"
        if f in state:
            state[f], state[r] = state[r], state[f]


def _mirror_alternate(state: Dict[str, Tensor], n_layers: int) -> None:
    for i in range(0, n_layers, 2):
        _mirror_layer(state, i)


def _param_shapes(mc: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    with torch.device("meta"):
        m = MambaDNA(mc)
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def _more(items: List[str]) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def from_caduceus(src: PathLike) -> Tuple[ModelConfig, Dict[str, Tensor], Dict[str, Any]]:
    """Read a Caduceus folder: (ModelConfig, mambadna state dict in fp32, info).

    ``info`` (JSON-able) names the variant, the weights file, the original config
    and the numerics notes; :func:`convert_from_caduceus` stores it in config.json
    under ``converted_from``. Raises :class:`CheckpointError` (one line naming the
    file and the field or tensor) for anything that does not map."""
    src = Path(src)
    mc, info = caduceus_model_config(src)
    state, wpath = read_caduceus_weights(src)
    info["weights"] = wpath.name
    fused = bool(info["caduceus_config"].get("fused_add_norm", CADUCEUS_DEFAULTS["fused_add_norm"]))
    table = _names(mc, fused)
    known = {c for c, _ in table}
    extra = sorted(set(state) - known)
    if extra:
        raise CheckpointError(wpath, f"unexpected tensor '{extra[0]}'{_more(extra)}: not part of a "
                                     f"{info['variant']} masked-LM model with this config.json")
    shapes = _param_shapes(mc)
    comp = torch.tensor(complement_ids(mc.vocab_size))
    out: Dict[str, Tensor] = {}
    first: Dict[str, str] = {}
    for cname, mname in table:
        if cname not in state:
            continue
        t = state[cname]
        if mname is None:
            if t.shape != comp.shape or t.is_floating_point() or not torch.equal(t.long(), comp):
                raise CheckpointError(wpath, f"tensor '{cname}' is not the character tokenizer's complement map "
                                             f"{comp.tolist()}")
            continue
        if tuple(t.shape) != shapes[mname]:
            raise CheckpointError(wpath, f"tensor '{cname}' has shape {list(t.shape)}, config.json implies "
                                         f"{list(shapes[mname])}")
        if not t.is_floating_point():
            raise CheckpointError(wpath, f"tensor '{cname}' has dtype {t.dtype}, expected floating point")
        if not bool(torch.isfinite(t).all()):
            raise CheckpointError(wpath, f"tensor '{cname}' holds NaN or infinite values")
        t = t.to(torch.float32)
        if mname in out:
            if not torch.equal(out[mname], t):
                why = ("an LM head untied from the embedding; mambadna ties them" if mname == "embedding.weight"
                       else "untied in/out projections of the two directions; mambadna shares them")
                raise CheckpointError(wpath, f"tensor '{cname}' differs from its tied twin '{first[mname]}': {why}")
            continue
        out[mname], first[mname] = t.contiguous(), cname
    missing = [c for c, m in table if m is not None and m not in out]
    if missing:
        raise CheckpointError(wpath, f"missing tensor '{missing[0]}'{_more(missing)} (config.json asks for it)")
    if info["mirrored_layers"]:
        _mirror_alternate(out, mc.n_layers)
    return mc, out, info


def load_caduceus(src: PathLike, device: Union[str, torch.device] = "cpu") -> MambaDNA:
    """A :class:`MambaDNA` from a Caduceus folder, converted in memory."""
    mc, state, _ = from_caduceus(src)
    model = MambaDNA(mc)
    model.load_state_dict(state, strict=True)
    return model.to(device)


def caduceus_checkpoint(model: MambaDNA, base: Optional[Dict[str, Any]] = None,
                        fused_add_norm: Optional[bool] = None,
                        where: Optional[PathLike] = None) -> Tuple[Dict[str, Any], Dict[str, Tensor]]:
    """(Caduceus config.json dict, state dict under ``CaduceusForMaskedLM``'s names)
    for ``model``. ``base``: the Caduceus config the model was converted from (its
    extra keys are kept and its ``fused_add_norm`` is the default). Refuses (one line)
    what Caduceus cannot represent."""
    c = model.config
    where = Path(where) / CONFIG if where is not None else None
    default = ModelConfig()
    handled = {"d_model", "n_layers", "d_state", "d_conv", "expand", "dt_rank", "n_groups", "bidirectional",
               "rc_equivariant", "vocab_size", "norm_eps", "dt_min", "dt_max", "dt_init_floor", "conv_bias",
               "initializer_range"}
    for f in c.to_dict():
        if f not in handled and getattr(c, f) != getattr(default, f):
            raise CheckpointError(where, f"model field {f} = {getattr(c, f)!r} has no Caduceus equivalent")
    if c.n_groups != 1:
        raise CheckpointError(where, f"model field n_groups = {c.n_groups} has no Caduceus equivalent "
                                     "(Mamba v1 has one B/C group)")
    if c.vocab_size < VOCAB_SIZE:
        raise CheckpointError(where, f"model field vocab_size = {c.vocab_size} is smaller than the character "
                                     f"tokenizer's {VOCAB_SIZE} ids")
    base = dict(base or {})
    fused = bool(base.get("fused_add_norm", False)) if fused_add_norm is None else bool(fused_add_norm)
    if fused and c.rc_equivariant and (not c.bidirectional or c.n_layers % 2):
        raise CheckpointError(where, "fused_add_norm with an RC-equivariant model needs bidirectional mixers and an "
                                     "even number of layers (Caduceus' fused RCPS block swaps the residual halves)")
    V = c.vocab_size
    pad = base.get("pad_vocab_size_multiple")
    if not (isinstance(pad, int) and not isinstance(pad, bool) and pad > 0 and V % pad == 0):
        pad = 8 if V % 8 == 0 else 1  # 12 ids: no padding, so the logits are exactly mambadna's
    width = c.mixer_width
    ssm = dict(base.get("ssm_cfg") or {})
    auto = ssm.get("dt_rank", "auto") == "auto" and c.dt_rank == math.ceil(width / 16)
    vals = dict(d_state=c.d_state, d_conv=c.d_conv, expand=c.expand, dt_rank="auto" if auto else c.dt_rank,
                dt_min=c.dt_min, dt_max=c.dt_max, dt_init_floor=c.dt_init_floor, conv_bias=c.conv_bias, bias=False)
    if "ssm_cfg" in base:  # the source's keys, plus any value off Mamba's defaults
        ssm.update((k, v) for k, v in vals.items() if k in ssm or v != SSM_DEFAULTS[k])
    else:  # every setting spelled out
        ssm = {**SSM_DEFAULTS, **vals}
    init = base.get("initializer_cfg")
    if not isinstance(init, dict):
        init = {"initializer_range": c.initializer_range, "rescale_prenorm_residual": True,
                "n_residuals_per_layer": 1}
    comp = complement_ids(V)
    cfg = {k: v for k, v in base.items() if k not in ("_name_or_path", "_commit_hash")}
    cfg.update({
        "model_type": MODEL_TYPE,
        "architectures": base.get("architectures") or ["CaduceusForMaskedLM"],
        "d_model": width, "n_layer": c.n_layers, "vocab_size": V, "pad_vocab_size_multiple": pad,
        "ssm_cfg": ssm, "rms_norm": True,
        "residual_in_fp32": bool(base.get("residual_in_fp32", True)), "fused_add_norm": fused,
        "norm_epsilon": c.norm_eps, "initializer_cfg": init,
        "bidirectional": c.bidirectional, "bidirectional_strategy": "add", "bidirectional_weight_tie": True,
        "rcps": c.rc_equivariant, "complement_map": {str(i): comp[i] for i in range(V)},
        "torch_dtype": "float32",
    })
    md = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if fused and c.rc_equivariant:
        _mirror_alternate(md, c.n_layers)
    comp_t = torch.tensor(comp, dtype=torch.long)
    state = {cname: (comp_t.clone() if mname is None else md[mname].clone().contiguous())
             for cname, mname in _names(c, fused)}
    return cfg, state
