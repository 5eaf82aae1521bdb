"""Checkpoints of other DNA models, read into mambadna and written back.

:mod:`mambadna.interop.caduceus`: Caduceus (Schiff et al. 2024) folders in the
Hugging Face layout, Ph and PS, both ways.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def source_line(cfg: Dict[str, Any]) -> Optional[str]:
    """One line for ``mambadna info`` saying where a model came from when it was
    not trained by mambadna (``cfg`` as :func:`~mambadna.components.checkpoint.read_config`
    returns it), else None."""
    conv = cfg.get("converted_from")
    if not isinstance(conv, dict):
        return None
    what = f"{conv.get('format', '?')} checkpoint"
    if conv.get("variant"):
        what = f"{conv['variant']} ({what})"
    wfile = f", weights {conv['weights']}" if conv.get("weights") else ""
    if conv.get("in_memory"):
        return f"source: {what}{wfile}, converted in memory"
    return f"source: converted from {what} {conv.get('source', '?')}{wfile}"
