"""Sharded runs of ``embed`` and ``classify``: one code path for one process and for torchrun.

The input's records are cut into *shards* of consecutive records (at most
``shard_size`` records, and for variable-length inputs at most a token
budget). The cut depends only on the input and the options, never on the
number of processes; shard k goes to rank ``k % world``. Within a shard the
records are batched exactly as in any other run, so every shard holds the
same bytes whichever rank computed it.

Each rank writes its shards into a hidden folder beside the output
(``.<out name>.shards/``), each shard atomically: its data files first, then
its manifest ``shard-000012.json`` (the commit). Rank 0 then merges the
shards, in input order, into the output(s) the user asked for -- each
written atomically -- and removes the folder. A single-process run is the
world-size-1 case: same shards, same merge, so the output's bytes do not
depend on the number of processes.

Resume: a shard is finished when its manifest exists with the run's key (the
inputs' real path, size and modification time, the model's files, every
option that changes the output) and its files have the sizes it lists. Run
the same command again after an interruption and the finished shards are
reused, the rest computed (on any number of processes). A run whose key
differs clears the folder first.

Failure (see :class:`mambadna.components.distributed.Guard`): a rank that
fails reports once; the others stop at their next check; nothing is merged.
Bad input (exit code 2) removes the folder as well -- there is nothing worth
resuming -- while an interrupted or crashed run leaves it, hidden, for the
next run. Nothing ever appears at the output path before the merge.

A job (:class:`ShardJob`) says how to validate, key, read, write and merge.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar

from mambadna.components.distributed import Guard, exit_code_of, init_distributed, shutdown
from mambadna.errors import InputError, Interrupted, MambaDNAError
from mambadna.io.files import PathLike, atomic_path, output_lock

log = logging.getLogger("mambadna")

KILL_ENV = "MAMBADNA_TEST_KILL_AFTER_SHARDS"  # test hook: SIGKILL a rank after it committed N shards
X = TypeVar("X")


# --------------------------------------------------------------------------- keys
def file_identity(path: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    """Real path, size and modification time of an input file (None for None)."""
    if path is None:
        return None
    p = Path(os.path.realpath(os.fspath(path)))
    try:
        st = p.stat()
    except OSError:
        return {"path": str(p)}
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_identity(directory: PathLike) -> List[Dict[str, Any]]:
    """Identities of the files of a model folder (its top level)."""
    d = Path(directory)
    if not d.is_dir():
        return [file_identity(d)]
    return [file_identity(p) for p in sorted(d.iterdir()) if p.is_file()]


# --------------------------------------------------------------------------- shard folder
class ShardDir:
    """The hidden folder of a run's shards, beside ``out``; ``key`` identifies the run."""

    def __init__(self, out: PathLike, key: Dict[str, Any]):
        out = Path(out)
        self.dir = out.parent / f".{out.name}.shards"
        self.key = key
        self.digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    def path(self, k: int, suffix: str) -> Path:
        return self.dir / f"shard-{k:06d}{suffix}"

    def prepare(self) -> None:
        """Rank 0, before any rank reads or writes: keep the shards of the same
        run (dropping temporary files a killed run left), clear any other."""
        run = self.dir / "run.json"
        if self.dir.exists():
            try:
                same = json.loads(run.read_text()).get("digest") == self.digest
            except (OSError, ValueError, AttributeError):
                same = False
            names = [p.name for p in self.dir.iterdir()]
            if any(not (n == "run.json" or n.startswith(("shard-", "."))) for n in names):
                raise InputError(self.dir, "exists and is not a mambadna shard folder; move it away")
            if not same:
                shutil.rmtree(self.dir)
            else:
                for p in self.dir.iterdir():
                    if p.name.startswith("."):
                        with contextlib.suppress(FileNotFoundError):
                            p.unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not run.exists():
            with atomic_path(run) as tmp:
                tmp.write_text(json.dumps({"digest": self.digest, "key": self.key}, indent=1, default=str))

    def finished(self) -> Set[int]:
        """Shards whose manifest matches this run and whose files are complete."""
        done: Set[int] = set()
        if not self.dir.is_dir():
            return done
        for m in self.dir.glob("shard-*.json"):
            try:
                d = json.loads(m.read_text())
                if d.get("digest") != self.digest:
                    continue
                if all((self.dir / n).is_file() and (self.dir / n).stat().st_size == size
                       for n, size in d["files"].items()):
                    done.add(int(d["shard"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return done

    def commit(self, k: int, files: Sequence[Path], meta: Dict[str, Any]) -> None:
        """Shard k is complete: its files exist under their final names."""
        d = {"digest": self.digest, "shard": k, "files": {p.name: p.stat().st_size for p in files}, "meta": meta}
        with atomic_path(self.path(k, ".json")) as tmp:
            tmp.write_text(json.dumps(d))

    def load(self, k: int) -> Dict[str, Any]:
        try:
            d = json.loads(self.path(k, ".json").read_text())
        except (OSError, ValueError):
            raise MambaDNAError(f"{self.dir}: shard {k} is missing (was the input changed during the run?)") from None
        if d.get("digest") != self.digest:
            raise MambaDNAError(f"{self.dir}: shard {k} belongs to another run")
        return d["meta"]

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------- cutting
class Cut:
    """Cuts a record stream into shards: a shard closes after ``size`` records
    or, with ``max_tokens``, once its records hold that many tokens
    (``length(record)``). :meth:`owned` yields ``(k, records)`` for the shards
    ``own(k)`` accepts (the others are only counted); ``count`` is the number
    of shards once the stream is exhausted."""

    def __init__(self, size: int, max_tokens: Optional[int] = None,
                 length: Optional[Callable[[Any], int]] = None):
        if int(size) < 1:
            raise InputError(None, f"--shard-size must be >= 1, got {size}")
        self.size, self.max_tokens, self.length = int(size), max_tokens, length
        self.count: Optional[int] = None

    def owned(self, items: Iterable[X], own: Callable[[int], bool]) -> Iterator[Tuple[int, List[X]]]:
        k, n, ntok = 0, 0, 0
        cur: List[X] = []
        mine = own(0)
        for x in items:
            n += 1
            if self.max_tokens:
                ntok += self.length(x)
            if mine:
                cur.append(x)
            if n >= self.size or (self.max_tokens and ntok >= self.max_tokens):
                if mine:
                    yield k, cur
                k, n, ntok, cur = k + 1, 0, 0, []
                mine = own(k)
        if n:
            if mine:
                yield k, cur
            k += 1
        self.count = k


# --------------------------------------------------------------------------- the run
class ShardJob:
    """What :func:`run` needs from a command (all methods run on every rank
    unless said otherwise).

    command: name for the output lock; outputs: final paths (the first names
    the shard folder); check(): cheap validation; prepare_outputs() (optional,
    rank 0 only): refuse or lock the outputs (``prepare_output``); key(device): what identifies
    the run's shards; setup(device): load the model; shards(own): read the whole
    input and yield ``(k, records)`` of the shards ``own`` accepts, with
    ``n_shards`` set at the end; write(k, records, shard_dir, check): write
    shard k's files (atomically) and return (files, manifest meta); merge(metas,
    shard_dir): rank 0 only, write the outputs from the shards' metas and files,
    return the summary.
    """

    command: str = ""
    outputs: List[Path] = []
    n_shards: int = 0

    def check(self) -> None: ...

    def key(self, device) -> Dict[str, Any]: ...

    def setup(self, device) -> None: ...

    def shards(self, own: Callable[[int], bool]) -> Iterator[Tuple[int, Any]]: ...

    def write(self, k: int, records: Any, sd: ShardDir, check: Callable[[], None]) -> Tuple[List[Path], Dict[str, Any]]: ...

    def merge(self, metas: List[Dict[str, Any]], sd: ShardDir) -> Dict[str, Any]: ...


def _kill_hook(written: int) -> None:
    n = os.environ.get(KILL_ENV)
    if n and written >= int(n):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def run(job: ShardJob, device_opt: Any = "auto") -> Dict[str, Any]:
    """Run ``job`` on this process's share of the shards (see the module doc);
    returns rank 0's summary on every rank."""
    from mambadna.inference.engine import prefetch

    d, device = init_distributed(device_opt)
    guard = Guard(d)
    sd: Optional[ShardDir] = None
    try:
        with contextlib.ExitStack() as stack:
            def start() -> None:
                nonlocal sd
                job.check()
                if d.main:  # checks (prepare_output) and locks: one writer per output
                    prepare = getattr(job, "prepare_outputs", None)
                    if prepare is not None:
                        prepare()
                    for o in job.outputs:
                        stack.enter_context(output_lock(o, command=job.command))
                sd = ShardDir(job.outputs[0], job.key(device))
                if d.main:
                    sd.prepare()

            guard.phase(start)

            def work() -> int:
                job.setup(device)
                done = sd.finished()
                if d.main and done:
                    log.info("reusing %d finished shard(s) of an earlier run from %s", len(done), sd.dir)
                written = 0
                for k, records in prefetch(job.shards(lambda k: k % d.world == d.rank and k not in done), depth=1):
                    guard.check()
                    files, meta = job.write(k, records, sd, guard.check)
                    sd.commit(k, files, meta)
                    written += 1
                    _kill_hook(written)
                return job.n_shards

            n = guard.phase(work)

            def merge() -> Optional[Dict[str, Any]]:
                if not d.main:
                    return None
                summary = job.merge([sd.load(k) for k in range(n)], sd)
                sd.remove()
                return summary

            summary = guard.phase(merge)
            return guard.share("summary", summary)
    except BaseException as e:
        if d.main and sd is not None and not isinstance(e, (Interrupted, KeyboardInterrupt)) \
                and exit_code_of(e) == 2:
            sd.remove()  # bad input: nothing worth resuming
        raise
    finally:
        close = getattr(job, "close", None)
        if close is not None:
            close()
        shutdown(d)

