"""`mambadna convert`: Caduceus folders to mambadna model folders and back
(the conversion itself: :mod:`mambadna.interop.caduceus`)."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


from mambadna.components.checkpoint import CONFIG, load_model, read_config, save_model
from mambadna.errors import InputError
from mambadna.interop.caduceus import SAFETENSORS, caduceus_checkpoint, from_caduceus
from mambadna.io.files import PathLike, atomic_dir, publish_mode
from mambadna.model.encoder import MambaDNA


def _check_out(out: Path, src: Optional[Path], overwrite: bool) -> None:
    """OUT may be new, an empty folder, or (with overwrite) an existing model folder."""
    if src is not None and out.resolve() == Path(src).resolve():
        raise InputError(out, "output folder is the source folder")
    if not out.exists():
        return
    if not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "exists and is not empty (pass --overwrite to replace it)")
        if not (out / CONFIG).is_file():
            raise InputError(out, f"exists and holds no {CONFIG}: refusing to replace a folder that is not a model")


def convert_from_caduceus(src: PathLike, out: PathLike, overwrite: bool = False) -> Path:
    """Write a mambadna model folder ``out`` from the Caduceus folder ``src``
    (everything is read and checked before anything is written; ``out`` appears
    whole or not at all). Returns ``out``."""
    src, out = Path(src), Path(out)
    _check_out(out, src, overwrite)
    mc, state, info = from_caduceus(src)
    model = MambaDNA(mc)
    model.load_state_dict(state, strict=True)
    command = shlex.join(["mambadna", "convert", "from-caduceus", str(src), str(out)])
    with atomic_dir(out) as tmp:
        save_model(model, tmp, extra={"converted_from": info, "command": command})
        publish_mode(tmp, 0o755)
    return out


def _model_and_base(model_or_dir) -> Tuple[MambaDNA, Optional[Dict[str, Any]], Optional[Path]]:
    if isinstance(model_or_dir, MambaDNA):
        return model_or_dir, None, None
    if hasattr(model_or_dir, "torch_model") and isinstance(model_or_dir.torch_model, MambaDNA):  # api.Model
        conv = (getattr(model_or_dir, "checkpoint_config", None) or {}).get("converted_from")
        base = conv.get("caduceus_config") if isinstance(conv, dict) and conv.get("format") == "caduceus" else None
        return model_or_dir.torch_model, base, getattr(model_or_dir, "path", None)
    if isinstance(model_or_dir, (str, os.PathLike)):
        src = Path(model_or_dir)
        cfg = read_config(src)
        conv = cfg.get("converted_from")
        base = conv.get("caduceus_config") if isinstance(conv, dict) and conv.get("format") == "caduceus" else None
        return load_model(src), base, src
    raise TypeError(f"to_caduceus needs a MambaDNA, a mambadna.Model or a model folder, got {type(model_or_dir)}")


def to_caduceus(model_or_dir, out: PathLike, overwrite: bool = False,
                fused_add_norm: Optional[bool] = None) -> Path:
    """Write a Caduceus folder (config.json + model.safetensors, every tensor of
    ``CaduceusForMaskedLM`` under its own name, tied ones included) that Caduceus'
    ``CaduceusForMaskedLM.from_pretrained(out)`` opens with mambadna's outputs.

    ``model_or_dir``: a model folder (mambadna's, converted or not, or a Caduceus
    folder), a :class:`MambaDNA` or a :class:`mambadna.Model`. A model converted from
    Caduceus gets its original config back (same fields, same tensors); others get
    ``fused_add_norm: false`` (the path Caduceus also runs on CPU) unless
    ``fused_add_norm`` says otherwise, and no vocabulary padding beyond mambadna's."""
    from safetensors.torch import save_file

    out = Path(out)
    model, base, src = _model_and_base(model_or_dir)
    _check_out(out, src, overwrite)
    cfg, state = caduceus_checkpoint(model, base, fused_add_norm, where=src)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        # top level sorted as transformers writes it; complement_map keeps its id order (Caduceus reads it in order)
        (tmp / CONFIG).write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
        for f in (SAFETENSORS, CONFIG):
            publish_mode(tmp / f)
        publish_mode(tmp, 0o755)
    return out
