"""Typed configuration of the encoder, saved as JSON beside the weights."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict

from mambadna.tokenizer import VOCAB_SIZE


@dataclass
class ModelConfig:
    """Mamba encoder hyper-parameters.

    d_model: residual width; n_layers: Mamba blocks; d_state: SSM state size N;
    d_conv: depthwise conv width; expand: d_inner = expand * d_model;
    dt_rank: low-rank width of the Δ projection (0 = ceil(d_model / 16));
    bidirectional: BiMamba (Caduceus) mixers instead of causal ones;
    rc_equivariant: parameter-shared reverse-complement equivariant stack
    (Caduceus-PS): the residual stream holds a forward half and an RC half of
    d_model // 2 channels each.
    """

    d_model: int = 128
    n_layers: int = 4
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0
    n_groups: int = 1
    bidirectional: bool = True
    rc_equivariant: bool = False
    vocab_size: int = VOCAB_SIZE
    norm_eps: float = 1e-5
    dt_min: float = 1e-3
    dt_max: float = 1e-1
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        if self.dt_rank <= 0:
            self.dt_rank = math.ceil(self.mixer_width / 16)
        for name in ("d_model", "n_layers", "d_state", "d_conv", "expand", "n_groups"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.rc_equivariant and self.d_model % 2:
            raise ValueError("rc_equivariant needs an even d_model")
        if self.d_inner % self.n_groups:
            raise ValueError("d_inner must be divisible by n_groups")

    @property
    def mixer_width(self) -> int:
        """Width each mixer sees (d_model, or d_model // 2 with rc_equivariant)."""
        return self.d_model // 2 if self.rc_equivariant else self.d_model

    @property
    def d_inner(self) -> int:
        return self.expand * self.mixer_width

    @property
    def objective(self) -> str:
        """Pretraining objective: 'mlm' for bidirectional models, 'clm' for causal."""
        return "mlm" if self.bidirectional else "clm"

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class MemoryConfig:
    """How training trades compute for activation memory; results are unchanged.

    checkpoint_layers: keep only each block's input, recompute the block in backward.
    layer_chunk: > 0: train each block in exact length chunks of this many positions
    (carried scan state and conv context; :mod:`mambadna.model.chunked`), bounding
    activation memory by one chunk; 0: off; -1: the trainer's choice for the device
    (off; 256 on a CPU without numba's compiled training scan; the model itself treats it as off).
    residual_bf16: keep the residual stream between blocks in bf16 (halves the
    stored block inputs at long lengths; used under CUDA autocast).
    scan_state_gib: GPU memory the scans' forwards may keep for their backwards
    (read by the trainer, :func:`mambadna.kernels.scan_saved_state_limit`);
    -1: 1/8 of the device; 0: none (recomputed in backward: less memory, slower).
    """

    checkpoint_layers: bool = False
    layer_chunk: int = 0
    residual_bf16: bool = False
    scan_state_gib: float = -1.0

    def __post_init__(self) -> None:
        if self.layer_chunk < -1:
            raise ValueError(f"MemoryConfig.layer_chunk must be >= -1, got {self.layer_chunk}")
        if not (math.isfinite(self.scan_state_gib) and self.scan_state_gib >= -1):
            raise ValueError(f"MemoryConfig.scan_state_gib must be -1 (auto) or >= 0, got {self.scan_state_gib}")
