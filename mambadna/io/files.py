"""Atomic file output: write to a temporary name beside the target, then rename."""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto
    ``path``; on error remove it, leaving no partial output.

    ``suffix`` keeps an extension on the temporary name (for writers that
    choose a format by extension, e.g. ``.vcf.gz``). A folder at ``path`` is
    an InputError (renaming onto it would fail after all the work).
    """
    path = Path(path)
    if path.is_dir():
        from mambadna.errors import InputError

        raise InputError(path, "output is an existing folder; give a file name")
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
def atomic_dir(path: PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces
    ``path``.

    An existing non-empty ``path`` is only replaced when the caller vouches for
    it: ``replace=True`` (a folder the run itself made, e.g. its own
    checkpoint) or :func:`prepare_output` checked it first (its own earlier
    output, or ``--overwrite``). Anything else is an InputError raised before
    the work, so a folder the run did not create is never deleted.
    """
    from mambadna.errors import InputError

    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise InputError(path, "output exists and is a file, not a folder")
        if any(path.iterdir()) and not replace and _real(path) not in _CLEARED:
            raise InputError(path, "output folder already exists; refusing to replace a folder this run "
                                   "did not create (choose another --out or pass --overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_HTSLIB_QUIET = False


def quiet_htslib() -> None:
    """Silence htslib's own stderr lines ("[W::vcf_parse] ..."): the loaders
    report every problem as one line naming the file and the record."""
    global _HTSLIB_QUIET
    if not _HTSLIB_QUIET:
        import pysam

        pysam.set_verbosity(0)
        _HTSLIB_QUIET = True


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


# --------------------------------------------------------------------------- outputs: checks and locks
# Every command checks its outputs before any work (prepare_output): an output
# that equals or contains an input is refused, an existing path of the wrong
# kind is refused, and an existing output that is not this command's own
# earlier output is only replaced with --overwrite. A lock file beside each
# output (".<name>.lock", owner pid) keeps two runs from writing it at once.

_HELD_LOCKS: "dict[Path, OutputLock]" = {}
_CLEARED: "set[Path]" = set()  # existing folders that prepare_output allowed atomic_dir to replace


def _real(p: PathLike) -> Path:
    return Path(os.path.realpath(os.path.expanduser(os.fspath(p))))


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _sniff_own(path: Path, command: Optional[str]) -> bool:
    """True when ``path`` looks like an earlier output of ``mambadna <command>``."""
    import json
    import zipfile

    if command is None:
        return False
    try:
        if path.is_dir():
            cfg = path / "config.json"
            if cfg.is_file():
                d = json.loads(cfg.read_text())
                if isinstance(d, dict) and command in d:  # save_model(extra={command: ...})
                    return True
            if command == "pretrain":
                return any(path.glob("checkpoint-*")) or (path / "metrics.jsonl").is_file()
            if command == "finetune":  # an unfinished run: its checkpoints (mambadna.tasks.finetune.CHECKPOINTS)
                return (path / "checkpoints" / "run.json").is_file()
            return False
        name = path.name.lower()
        if name.endswith(".npz"):
            with zipfile.ZipFile(path) as zf:
                return command == "embed" and "embeddings.npy" in zf.namelist()
        if name.endswith(".parquet"):
            if command != "embed":
                return False
            import pyarrow.parquet as pq

            return "embedding" in pq.read_schema(str(path)).names
        if name.endswith(".vcf.gz") or name.endswith(".vcf.gz.tbi"):
            import gzip

            with gzip.open(path, "rb") as fh:
                return b"MAMBADNA_" in fh.read(1 << 16)
        with open(path, "rb") as fh:
            first = fh.readline(4096)
        if command == "classify":
            return first.startswith((b"contig\tpos\tid\tref\talt\tallele\tkind", b"name\tcontig\tstart\tend\tstrand"))
        return False
    except Exception:  # unreadable or foreign: not ours
        return False


def prepare_output(path: PathLike, kind: str = "file", overwrite: bool = False,
                   inputs: Iterable[Optional[PathLike]] = (), command: Optional[str] = None,
                   what: str = "--out") -> Path:
    """Check an output path before any work and lock it for this run.

    kind: "file" or "dir". Raises InputError naming ``path`` when: it equals an
    input (or, for a folder, contains one); it exists as the other kind; it
    exists and is not an earlier output of ``mambadna <command>`` (unless
    ``overwrite``); its folder cannot be written; another live process holds
    its lock. The lock is released by :func:`release_output_locks` (the CLI
    calls it after each command) or at exit. Returns ``Path(path)``.
    """
    from mambadna.errors import InputError

    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    raw = os.fspath(path)
    if not raw.strip():
        raise InputError(None, f"{what} is empty")
    p = Path(raw)
    real = _real(p)
    for inp in inputs:
        if inp is None or not str(inp):
            continue
        ri = _real(inp)
        if ri == real:
            raise InputError(p, f"{what} is the same path as the input {inp}; writing it would destroy "
                                f"the input (choose another {what})")
        if kind == "dir" and _is_within(ri, real):
            raise InputError(p, f"{what} contains the input {inp}; replacing it would delete the input "
                                f"(choose another {what})")
    anc = real.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise InputError(p, f"cannot create {what}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise InputError(p, f"cannot write {what}: folder {anc} is not writable (permission denied)")
    acquire_output_lock(p, command=command)
    try:
        if p.exists() or p.is_symlink():
            if kind == "dir" and not p.is_dir():
                raise InputError(p, f"{what} exists and is a file, not a folder")
            if kind == "file" and p.is_dir():
                raise InputError(p, f"{what} is an existing folder; give a file name")
            if kind == "dir" and p.is_dir() and not os.access(p, os.W_OK | os.X_OK):
                raise InputError(p, f"cannot write {what}: folder is not writable (permission denied)")
            empty = p.is_dir() and not any(p.iterdir())
            if not (empty or overwrite or _sniff_own(p, command)):
                own = f"an earlier output of `mambadna {command}`" if command else "an earlier output"
                raise InputError(p, f"{what} already exists and is not {own}; refusing to overwrite it "
                                    f"(choose another {what}, or pass --overwrite to replace it)")
            if kind == "dir":
                _CLEARED.add(real)
    except BaseException:
        release_output_locks(p)
        raise
    return p


class OutputLock:
    """``.<name>.lock`` beside an output: JSON with the owner's pid, host and
    start time. A lock whose owner process is gone (same host) is stale and
    taken over; a live owner's lock is an InputError for the second writer."""

    def __init__(self, target: PathLike, command: Optional[str] = None):
        self.target = Path(target)
        self.path = self.target.parent / f".{self.target.name}.lock"
        self.command = command
        self.created_dirs: List[Path] = []
        self.held = False

    @staticmethod
    def _start_time(pid: int) -> Optional[str]:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                return fh.read().rsplit(b")", 1)[1].split()[19].decode()
        except (OSError, IndexError):
            return None

    def _payload(self) -> bytes:
        import json
        import socket
        import time

        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "start": self._start_time(os.getpid()), "command": self.command,
                           "output": str(self.target), "since": time.time()}).encode()

    def _owner(self) -> "tuple[Optional[dict], bool]":
        """(lock content or None, stale?)."""
        import json
        import socket
        import time

        try:
            raw = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, True
        try:
            d = json.loads(raw)
            pid = int(d["pid"])
        except (ValueError, KeyError, TypeError):
            return None, age > 10  # half-written by a process killed at once
        if d.get("host") != socket.gethostname():
            return d, False  # another machine: cannot tell, assume alive
        if pid == os.getpid():
            return d, False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return d, True
        except PermissionError:
            pass
        st = self._start_time(pid)
        return d, bool(d.get("start") and st and st != d.get("start"))  # pid reused

    def acquire(self) -> None:
        import logging
        from mambadna.errors import InputError

        parent = self.target.parent
        missing = []
        q = parent
        while not q.exists():
            missing.append(q)
            q = q.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(self.target, f"cannot create the output folder {parent}: {e.strerror}") from None
        self.created_dirs = missing
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                owner, stale = self._owner()
                if owner is not None and int(owner.get("pid", -1)) == os.getpid():
                    self.held = True  # this process already holds it (re-entrant)
                    return
                if not stale:
                    who = (f"pid {owner.get('pid')} on {owner.get('host')}"
                           + (f" (mambadna {owner['command']})" if owner.get("command") else "")) if owner else "another process"
                    raise InputError(self.target, f"output is in use by {who}: lock file {self.path} exists; "
                                                  f"wait for that run to finish, or delete the lock file if "
                                                  f"that process is gone") from None
                logging.getLogger("mambadna").warning(
                    "removing stale lock %s (owner pid %s is gone)", self.path, owner.get("pid") if owner else "?")
                stale_tmp = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
                try:
                    os.replace(self.path, stale_tmp)  # one of several racing takers wins
                    stale_tmp.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise InputError(self.target, f"cannot create lock file {self.path}: {e.strerror}") from None
            with os.fdopen(fd, "wb") as fh:
                fh.write(self._payload())
            self.held = True
            return
        raise InputError(self.target, f"could not take the lock {self.path} (contended)")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner, _ = self._owner()
        if owner is not None and int(owner.get("pid", -1)) == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        if not self.target.exists():  # failed run: leave no folders behind either
            for d in self.created_dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()


def acquire_output_lock(path: PathLike, command: Optional[str] = None) -> OutputLock:
    """Take (or re-enter) the lock of output ``path``; see :class:`OutputLock`."""
    key = _real(path)
    lock = _HELD_LOCKS.get(key)
    if lock is not None and lock.held:
        return lock
    lock = OutputLock(path, command)
    lock.acquire()
    _HELD_LOCKS[key] = lock
    return lock


def release_output_locks(path: Optional[PathLike] = None) -> None:
    """Release the lock of ``path``, or every lock this process holds."""
    keys = list(_HELD_LOCKS) if path is None else [_real(path)]
    for k in keys:
        lock = _HELD_LOCKS.pop(k, None)
        if lock is not None:
            lock.release()
        _CLEARED.discard(k)


atexit.register(release_output_locks)


@contextlib.contextmanager
def output_lock(path: PathLike, command: Optional[str] = None) -> Iterator[OutputLock]:
    """``with output_lock(out):`` hold the output's lock for the block."""
    held_before = _real(path) in _HELD_LOCKS
    lock = acquire_output_lock(path, command)
    try:
        yield lock
    finally:
        if not held_before:
            release_output_locks(path)


def check_finite(values, path: PathLike, what: str = "output") -> None:
    """Raise TrainingError naming ``path`` when ``values`` (numpy array or
    tensor) hold NaN or infinity: non-finite results are never written."""
    import numpy as np

    from mambadna.errors import TrainingError

    a = values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    if a.dtype.kind in "fc" and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise TrainingError(f"{os.fspath(path)}: {bad} non-finite value(s) in the {what} "
                            f"(the model's weights or inputs produce NaN/inf); nothing written")


def jsonable(obj):
    """``obj`` as plain JSON types (numpy scalars via ``.item()``, anything else as ``str``)."""
    import json

    return json.loads(json.dumps(obj, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
