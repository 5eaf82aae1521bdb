"""Checkpoints: ``model.safetensors`` + ``config.json`` (+ trainer state). No pickle."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mambadna.model.config import ModelConfig
from mambadna.errors import CheckpointError
from mambadna.model.encoder import MambaDNA
from mambadna.io.weights import CONFIG, WEIGHTS, check_inside, load_state_dict  # noqa: F401 (re-exported)

FORMAT_VERSION = 1  # config.json "format_version"; a larger one was written by a newer mambadna


MODEL_TYPE = "mambadna"  # config.json's "model_type" (Hugging Face convention)
CARD = "README.md"  # model card written beside the weights when training info is given


def save_model(model: MambaDNA, directory: Union[str, Path], extra: Optional[Dict[str, Any]] = None) -> None:
    """Write weights, a flat hub-style config.json (``model_type: "mambadna"``, the
    ModelConfig fields, then ``extra``'s keys) and, when ``extra`` is given, a
    README.md model card into an existing ``directory`` (callers write into a
    temporary folder and rename it, see :func:`mambadna.io.files.atomic_dir`)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": "pt", "library": "mambadna"})
    from mambadna import __version__

    cfg: Dict[str, Any] = {"model_type": MODEL_TYPE, "architectures": ["MambaDNA"], "mambadna_version": __version__,
                           "format_version": FORMAT_VERSION}
    cfg.update(model.config.to_dict())
    for k, v in (extra or {}).items():
        if k in cfg or k == "model":
            raise ValueError(f"save_model: extra key {k!r} collides with a config.json field")
        cfg[k] = v
    (directory / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    if extra:
        from mambadna.components.card import model_card

        (directory / CARD).write_text(model_card(model, extra))
    from mambadna.io.files import publish_mode

    for name in (WEIGHTS, CONFIG, CARD):  # one mode for all (files made by mkstemp would be 0600)
        if (directory / name).exists():
            publish_mode(directory / name)


def read_config(directory: Union[str, Path]) -> Dict[str, Any]:
    """The config.json of a model directory, always in the nested form: the model
    config under 'model', everything else (step, val, head, ...) at the top.

    Reads the flat hub-style file (``model_type: "mambadna"``), the older nested
    one (``{"model": {...}, ...}``), and a Caduceus folder (``model_type:
    "caduceus"``, converted by :mod:`mambadna.interop.caduceus`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(directory, "model directory does not exist")
    path = directory / CONFIG
    if not path.is_file():
        raise CheckpointError(directory, f"no {CONFIG} in model directory")
    check_inside(directory, path)
    try:
        d = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"not valid JSON ({e})") from None
    except OSError as e:
        raise CheckpointError(path, f"cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(path, "not a JSON object")
    ver = d.get("format_version", 1)
    if not isinstance(ver, int) or isinstance(ver, bool):
        raise CheckpointError(path, f"format_version must be an integer, got {ver!r}")
    if ver > FORMAT_VERSION:
        raise CheckpointError(path, f"written by a newer mambadna (checkpoint format {ver}; this version "
                                    f"reads format {FORMAT_VERSION} or older): upgrade mambadna")
    if d.get("model_type") == "caduceus":
        from mambadna.interop.caduceus import caduceus_read_config

        return caduceus_read_config(directory, d)
    if isinstance(d.get("model"), dict):  # the nested format of earlier versions
        return d
    if d.get("model_type") != MODEL_TYPE:
        raise CheckpointError(path, f"not a mambadna model config (model_type {d.get('model_type')!r}, "
                                    "no 'model' section)")
    fields = set(ModelConfig.__dataclass_fields__)
    out: Dict[str, Any] = {"model": {k: v for k, v in d.items() if k in fields}}
    out.update((k, v) for k, v in d.items() if k not in fields)
    return out


def _shape(t) -> str:
    return "(" + ", ".join(str(int(x)) for x in t.shape) + ")"


def check_state_dict(state: Dict[str, torch.Tensor], expected: Dict[str, torch.Tensor], path: Union[str, Path],
                     against: str = CONFIG, check_finite: bool = True) -> None:
    """Compare loaded weights with what a model expects: names, shapes, dtypes
    (a float may be stored at another float precision) and finiteness. Raises
    CheckpointError naming ``path`` and the first tensor that differs."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(path, f"tensor {missing[0]!r} required by {against} is missing{more}: "
                                    f"weights and config do not belong together")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(path, f"tensor {unexpected[0]!r} is not part of the model {against} "
                                    f"describes{more}: weights and config do not belong together")
    for k, want in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(path, f"tensor {k!r} has shape {_shape(got)} but {against} needs "
                                        f"{_shape(want)}: weights and config do not belong together")
        if got.dtype != want.dtype and not (got.dtype.is_floating_point and want.dtype.is_floating_point):
            raise CheckpointError(path, f"tensor {k!r} has dtype {str(got.dtype).replace('torch.', '')} "
                                        f"but {against} needs {str(want.dtype).replace('torch.', '')}")
        if check_finite and got.dtype.is_floating_point and not bool(torch.isfinite(got).all()):
            raise CheckpointError(path, f"tensor {k!r} holds NaN or infinite values (saved after training "
                                        f"diverged?): refusing to use it")


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> MambaDNA:
    """Build a :class:`MambaDNA` from ``directory`` (config.json + model.safetensors,
    or a Caduceus folder, converted in memory)."""
    directory = Path(directory)
    cfg_dict = read_config(directory)
    if "converted_from" in cfg_dict and cfg_dict["converted_from"].get("in_memory"):
        from mambadna.interop.caduceus import load_caduceus

        return load_caduceus(directory).to(device)
    try:
        cfg = ModelConfig.from_dict(cfg_dict["model"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(directory / CONFIG, f"invalid model config: {e}") from None
    state = load_state_dict(directory / WEIGHTS)
    check_state_dict(state, expected_state(cfg), directory / WEIGHTS)  # before allocating the model
    model = MambaDNA(cfg)
    model.load_state_dict(state, strict=True)
    return model.to(device)


def expected_state(cfg: ModelConfig) -> Dict[str, torch.Tensor]:
    """Names, shapes and dtypes of a model's tensors (on the meta device: no memory)."""
    try:
        with torch.device("meta"):
            return MambaDNA(cfg).state_dict()
    except Exception:  # an init that meta tensors cannot run: build it for real
        return MambaDNA(cfg).state_dict()
