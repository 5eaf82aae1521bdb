"""`mambadna info`: what a model folder holds (config, size, source, training state)."""
from __future__ import annotations

import json
from pathlib import Path

from mambadna.components.checkpoint import load_model, read_config
from mambadna.interop import source_line
from mambadna.tasks.pretrain import _checkpoints


def model_info(directory: str) -> str:
    """Human-readable summary of a model directory: config, parameter count,
    training state."""
    d = Path(directory)
    cfg = read_config(d)
    model = load_model(d)
    src = source_line(cfg)  # e.g. "source: Caduceus-PS (caduceus checkpoint), ..., converted in memory"
    lines = [f"model: {d}", f"parameters: {model.num_parameters():,}"] + ([src] if src else []) + ["config:"]
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
