"""Model-folder files at the lowest level: names, and safe reading of safetensors
(no pickle, no links leading outside the folder). Used by checkpoints and converters."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import torch

from mambadna.errors import CheckpointError

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def check_inside(directory: Path, path: Path) -> None:
    """A file of a model folder must not lead outside it (a symlink to elsewhere)."""
    root, real = Path(directory).resolve(), Path(path).resolve()
    try:
        real.relative_to(root)
    except ValueError:
        raise CheckpointError(path, f"is a link to {real}, outside the model folder; "
                                    f"refusing to follow it") from None


def load_state_dict(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Read a safetensors file, turning any failure into a CheckpointError."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path.parent, f"no {path.name} in model directory")
    check_inside(path.parent, path)
    if path.stat().st_size < 8:
        raise CheckpointError(path, f"truncated safetensors file ({path.stat().st_size} bytes)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # safetensors raises several types on corrupt files
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05") or head == b"PK":
            raise CheckpointError(path, "is a pickle / torch.save file, not safetensors; mambadna never "
                                        "unpickles (convert it with safetensors.torch.save_file)") from None
        raise CheckpointError(path, f"corrupt or unreadable safetensors file ({type(e).__name__}: {e})") from None
