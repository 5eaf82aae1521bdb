"""Device resolution, the one place that turns a ``--device`` value into a torch.device;
and module constants kept on each device."""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch

from mambadna.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """"auto" (or None) -> cuda when available, else cpu; "cuda[:i]" without a GPU,
    or any other device type, is an InputError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(None, f"unknown device {device!r} (use auto, cpu or cuda)") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(None, f"unsupported device {device!r} (use auto, cpu or cuda)")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(None, "--device cuda requested but no CUDA device is available")
    return dev


_CONSTANTS: Dict[Tuple[int, torch.device], torch.Tensor] = {}


def constant_on(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The module constant ``t`` on ``device``, copied once: a copy from pageable
    host memory waits for all the work queued on the device, which would stall
    a pipeline of GPU work at every call."""
    key = (id(t), device)
    c = _CONSTANTS.get(key)
    if c is None:
        c = _CONSTANTS[key] = t.to(device)
    return c
