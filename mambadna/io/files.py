"""Atomic file output: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto
    ``path``; on error remove it, leaving no partial output.

    ``suffix`` keeps an extension on the temporary name (for writers that
    choose a format by extension, e.g. ``.vcf.gz``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces
    ``path`` (an existing directory of that name is removed first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_input_file(path: PathLike, what: str) -> None:
    """Raise InputError naming ``path`` unless it is an existing, non-empty,
    readable file; ``what`` names the expected kind ("FASTA file", ...)."""
    from mambadna.errors import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(path, "no such file")
    if p.is_dir():
        raise InputError(path, f"is a directory, not a {what}")
    if p.stat().st_size == 0:
        raise InputError(path, "empty file")
    if not os.access(p, os.R_OK):
        raise InputError(path, "file is not readable (permission denied)")


def publish_mode(path: PathLike, mode: int = 0o644) -> None:
    """Give a temporary output (mkstemp/mkdtemp: 0600/0700) the usual
    ``mode & ~umask`` before it is renamed into place."""
    um = os.umask(0)
    os.umask(um)
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~um)
