"""Hub-style model folders: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A mambadna model folder follows the Hugging Face conventions: a flat config.json
with ``model_type: "mambadna"``, ``model.safetensors``, a README.md model card.
Downloading and uploading go through ``huggingface_hub``, which is optional
(``pip install 'mambadna[hub]'``) and imported only when a repo id is used.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch

from mambadna.components.checkpoint import CARD, load_model, read_config, save_model
from mambadna.errors import CheckpointError, InputError
from mambadna.model.encoder import MambaDNA

PathLike = Union[str, os.PathLike]

# what a model repo needs (mambadna's own folders and Caduceus' alike)
HUB_FILES = ["config.json", "model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
             "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin", "head.safetensors",
             "tokenizer_config.json", "README.md", "metrics.json", "*.png"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# config.json keys that save_model writes itself, and "head" (the encoder alone is saved: no head weights)
_OWN_KEYS = {"model", "model_type", "architectures", "mambadna_version", "format_version", "head"}


def _hub(what: str):
    try:
        import huggingface_hub
    except ImportError:
        raise InputError(None, f"{what} needs huggingface_hub: pip install 'mambadna[hub]'") from None
    return huggingface_hub


def saved_extra(checkpoint_config: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The training info of a config (as read_config returns it) to save again
    (a model converted in memory becomes an ordinary converted folder)."""
    extra = {k: v for k, v in (checkpoint_config or {}).items() if k not in _OWN_KEYS}
    conv = extra.get("converted_from")
    if isinstance(conv, dict) and "in_memory" in conv:
        extra["converted_from"] = {k: v for k, v in conv.items() if k != "in_memory"}
    return extra


def save_pretrained(model: MambaDNA, directory: PathLike, extra: Optional[Dict[str, Any]] = None) -> Path:
    """Write config.json, model.safetensors and README.md into ``directory``
    (created if needed; other files there are kept; each file replaced whole)."""
    from mambadna.components.card import model_card

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory, prefix=".save-") as tmp:
        save_model(model, tmp, extra=extra or None)
        if not (Path(tmp) / CARD).exists():
            (Path(tmp) / CARD).write_text(model_card(model, extra or {}))
        for f in Path(tmp).iterdir():
            os.chmod(f, 0o644 & ~_umask())
            os.replace(f, directory / f.name)
    return directory


def _umask() -> int:
    um = os.umask(0)
    os.umask(um)
    return um


def resolve_pretrained(path_or_repo_id: PathLike, revision: Optional[str] = None, cache_dir: Optional[PathLike] = None,
                       token: Optional[str] = None, local_files_only: bool = False) -> Path:
    """A local model folder as is; otherwise a hub repo id ("owner/name"), downloaded
    through huggingface_hub into ``cache_dir`` (default ``$MAMBADNA_CACHE`` or
    ``~/.cache/mambadna``) under ``hub/owner--name/revision``."""
    p = Path(path_or_repo_id).expanduser()
    if p.is_dir():
        return p
    rid = str(path_or_repo_id)
    if p.exists() or not _REPO_ID.fullmatch(rid):
        raise CheckpointError(p, "model directory does not exist")
    hub = _hub(f"{rid}: no such folder; downloading it from the Hugging Face hub")
    from mambadna import __version__
    from mambadna.io.fasta import cache_root

    # plain files in mambadna's cache, not the hub cache's links into its blob store: a model folder's
    # files must lie inside it (components.checkpoint refuses links that lead outside)
    target = cache_root(cache_dir) / "hub" / rid.replace("/", "--") / (revision or "main")
    try:
        local = hub.snapshot_download(repo_id=rid, revision=revision, local_dir=str(target), token=token,
                                      local_files_only=local_files_only, allow_patterns=HUB_FILES,
                                      library_name="mambadna", library_version=__version__)
    except Exception as e:  # network, authentication, missing repo: one line
        first = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(rid, f"no such folder, and the hub download failed ({type(e).__name__}: "
                                   f"{first[:200]})") from None
    return Path(local)


def from_pretrained(path_or_repo_id: PathLike, device: Union[str, torch.device] = "cpu", **hub_kw) -> MambaDNA:
    """A :class:`MambaDNA` from a model folder (mambadna's or Caduceus') or hub repo id."""
    return load_model(resolve_pretrained(path_or_repo_id, **hub_kw), device)


def push_to_hub(directory: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None, revision: Optional[str] = None) -> str:
    """Upload a model folder's files (config, weights, card, metrics, plots; not
    checkpoint-* folders) to the hub repo ``repo_id`` (created if missing).
    Returns what the hub answers (the commit URL)."""
    directory = Path(directory)
    read_config(directory)  # a model folder, or a one-line error before any network
    hub = _hub("uploading to the Hugging Face hub")
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
        res = api.upload_folder(folder_path=str(directory), repo_id=repo_id, repo_type="model",
                                revision=revision, allow_patterns=HUB_FILES,
                                commit_message=commit_message or f"Upload mambadna model from {directory.name}")
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise InputError(repo_id, f"hub upload failed ({type(e).__name__}: {first[:200]})") from None
    return str(getattr(res, "commit_url", res))
