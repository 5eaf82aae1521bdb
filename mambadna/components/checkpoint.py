"""Checkpoints: ``model.safetensors`` + ``config.json`` (+ trainer state). No pickle."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mambadna.model.config import ModelConfig
from mambadna.errors import CheckpointError
from mambadna.model.encoder import MambaDNA

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_model(model: MambaDNA, directory: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> None:
    """Write weights and config into an existing ``directory`` (callers write
    into a temporary folder and rename it, see :func:`mambadna.io.files.atomic_dir`)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt", "library": "mambadna"})
    cfg = {"model": model.config.to_dict()}
    if extra:
        cfg.update(extra)
    (directory / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def read_config(directory: Union[str, Path]) -> Dict[str, Any]:
    """The whole config.json of a model directory (model config under 'model')."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "model directory does not exist")
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(directory, f"no {CONFIG} in model directory")
    try:
        d = json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    if not isinstance(d, dict) or "model" not in d:
        raise CheckpointError(path, "no 'model' section in config")
    return d


def load_state_dict(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Read a safetensors file, turning any failure into a CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path.parent, f"no {path.name} in model directory")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises several types on corrupt files
        raise CheckpointError(path, f"corrupt or unreadable safetensors file ({type(e).__name__}: {e})") from None


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> MambaDNA:
    """Build a :class:`MambaDNA` from ``directory`` (config.json + model.safetensors)."""
    directory = Path(directory)
    cfg_dict = read_config(directory)
    try:
        cfg = ModelConfig.from_dict(cfg_dict["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(directory / CONFIG, f"invalid model config: {e}") from None
    model = MambaDNA(cfg)
    state = load_state_dict(directory / WEIGHTS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(directory / WEIGHTS,
                              f"weights do not match config (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device)
