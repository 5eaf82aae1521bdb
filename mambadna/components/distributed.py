"""Several processes under ``torchrun``: the one place that reads RANK /
WORLD_SIZE / LOCAL_RANK, starts the process group (NCCL on CUDA, gloo on CPU),
gives each process its device, and makes the processes agree on failure.

* :func:`init_distributed` -> (:class:`Dist`, device). Without torchrun
  (WORLD_SIZE unset or 1) it is the single-process case: no process group.
* :class:`Guard` runs the phases of a sharded run. A rank that fails reports
  it once through the process group's store (the first report wins and is the
  one line the user sees); the other ranks see it at their next
  :meth:`Guard.check` and stop. Each phase ends with every rank waiting for
  the others and an all-reduce of the failure flag (its exit code), so nothing
  is published unless every rank succeeded.
* :func:`launch_torchrun` (``--gpus N``) re-runs a ``mambadna`` command under
  ``torchrun --nproc-per-node N`` and turns the workers' one-line error into
  its own. NVLink multicast stays off in every child environment
  (:data:`NO_MULTICAST`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import torch

from mambadna.errors import InputError, Interrupted, MambaDNAError

# NVLink multicast (NVLS) can take shared GPUs out of service: off for NCCL,
# symmetric memory and NVSHMEM, in this process and in every child.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
ERROR_FILE_ENV = "MAMBADNA_ERROR_FILE"  # set by launch_torchrun: where a worker puts its one-line error

T = TypeVar("T")


@dataclass
class Dist:
    """This process's place in the run: rank, world size, local rank (GPU index
    on its host). ``world == 1``: a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: Optional[torch.device] = None
    owns_group: bool = False  # this call started the process group (shutdown() ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_reduce_max(self, value: int) -> int:
        """Maximum of an integer over the ranks (failure flags, stop signals)."""
        if self.world <= 1:
            return int(value)
        import torch.distributed as dist

        t = torch.tensor([int(value)], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def _collective_device(self) -> torch.device:
        import torch.distributed as dist

        if dist.get_backend() == "nccl":
            return self.device if self.device is not None else torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    @property
    def store(self):
        """The process group's key-value store (torchrun's), or None."""
        if self.world <= 1:
            return None
        from torch.distributed import distributed_c10d

        return distributed_c10d._get_default_store()


def env_world() -> Tuple[int, int, int]:
    """(rank, world, local rank) from torchrun's environment; (0, 1, 0) outside it."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """False only in a torchrun worker of rank > 0 (for messages printed once)."""
    return env_world()[0] == 0


def init_distributed(device_opt: Any = "auto") -> Tuple[Dist, torch.device]:
    """Join the torchrun process group (when WORLD_SIZE > 1) and pick this
    rank's device: ``cuda:LOCAL_RANK`` with NCCL when CUDA is available and
    ``device_opt`` is not "cpu", else the CPU with gloo. Outside torchrun:
    ``Dist()`` and :func:`resolve_device` of ``device_opt``."""
    from mambadna.components.device import resolve_device

    rank, world, local = env_world()
    if world <= 1:
        device = resolve_device(device_opt)
        return Dist(device=device), device
    for k, v in NO_MULTICAST.items():
        os.environ.setdefault(k, v)
    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and str(device_opt) != "cpu"
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise InputError(None, f"rank {rank} has local rank {local} but only {torch.cuda.device_count()} "
                                   f"CUDA device(s) are visible")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        if str(device_opt).startswith("cuda"):
            resolve_device(device_opt)  # the usual error: no CUDA device
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Dist(rank, world, local, device, owns), device


def shutdown(d: Dist) -> None:
    """Leave the process group :func:`init_distributed` started (if it did)."""
    if d.world > 1 and d.owns_group:
        import torch.distributed as dist

        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a peer already gone: nothing left to agree on
                pass


# --------------------------------------------------------------------------- failure protocol
class PeerFailed(MambaDNAError):
    """Raised on the ranks whose work was fine (or failed second) when another
    rank failed first: that rank reports the error; this one stays quiet and
    exits with the same code."""

    quiet = True

    def __init__(self, message: str, exit_code: int):
        self.exit_code = int(exit_code)
        super().__init__(message)


def exit_code_of(exc: BaseException) -> int:
    """The CLI's exit code for an exception: 2 bad input, 1 system failure, 128 + signal."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, MambaDNAError):
        return 2
    return 1


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename is not None else exc.strerror
    return str(exc) or type(exc).__name__


class Guard:
    """Runs the phases of a sharded run on every rank, see the module doc.

    ``phase(fn)`` runs ``fn()`` here and returns its value once every rank's
    ``fn`` succeeded. When one fails, the first failing rank re-raises its own
    exception (marked to be reported), the others raise :class:`PeerFailed`.
    ``check()`` (cheap, rate-limited) raises PeerFailed as soon as another
    rank has failed: call it between batches so that the others stop early.
    An interrupt (SIGINT/SIGTERM) is re-raised at once, without waiting.
    """

    _runs = 0  # guards made in this process: the same sequence on every rank

    def __init__(self, d: Dist, interval: float = 0.25):
        self.d = d
        self.interval = interval
        self._next = 0.0
        self._phase = 0
        Guard._runs += 1
        self.prefix = f"mambadna/run{Guard._runs}/"  # keys of one run never meet another's
        self.KEY = self.prefix + "failed"

    def check(self, force: bool = False) -> None:
        if self.d.world <= 1:
            return
        now = time.monotonic()
        if not force and now < self._next:
            return
        self._next = now + self.interval
        store = self.d.store
        if store.check([self.KEY]):
            info = json.loads(store.get(self.KEY))
            raise PeerFailed(f"rank {info['rank']} failed: {info['message']}", info["code"])

    def _report(self, exc: BaseException) -> None:
        """Mark ``exc`` as the run's one reported failure (first rank) or as quiet."""
        if isinstance(exc, PeerFailed):
            return
        store = self.d.store
        first = store.add(self.prefix + "failures", 1) == 1
        if first:
            store.set(self.KEY, json.dumps({"rank": self.d.rank, "code": exit_code_of(exc),
                                            "message": _describe(exc)}))
        try:
            exc.mambadna_report = bool(first)  # read by report_failure
        except AttributeError:
            pass

    def _agree(self, code: int) -> int:
        """Wait for every rank (polling the store: no collective timeout while
        a slow rank finishes), then all-reduce the failure flag."""
        store = self.d.store
        key = f"{self.prefix}phase{self._phase}"
        self._phase += 1
        store.add(key, 1)
        while store.add(key, 0) < self.d.world:
            time.sleep(0.05)
        return self.d.all_reduce_max(code)

    def phase(self, fn: Callable[[], T]) -> T:
        if self.d.world <= 1:
            return fn()
        try:
            result = fn()
        except BaseException as e:
            if isinstance(e, (Interrupted, KeyboardInterrupt, SystemExit)):
                raise  # peers are being stopped too; do not wait on them
            self._report(e)
            self._agree(exit_code_of(e))
            raise
        code = self._agree(0)
        if code:
            self.check(force=True)  # raises PeerFailed with the first report
            raise PeerFailed("another rank failed", code)
        return result

    def share(self, name: str, value: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        """Rank 0 publishes a JSON-able dict (a summary); every rank gets it back.
        Call on every rank after a phase in which rank 0 computed ``value``."""
        if self.d.world <= 1:
            return value or {}
        store = self.d.store
        key = f"{self.prefix}share/{name}"
        if self.d.main:
            store.set(key, json.dumps(value or {}))
        return json.loads(store.get(key))


def report_failure(line: str, exc: BaseException) -> None:
    """Print the CLI's one-line error ``line`` for ``exc`` -- or not:

    * quiet on ranks whose failure is another rank's (:class:`PeerFailed`, or
      a second report), and on ranks > 0 for errors raised outside a guarded
      phase (every rank raised the same one; rank 0 says it);
    * in a worker launched by :func:`launch_torchrun`, the line goes to the
      launcher (which prints it) instead of stderr.
    """
    reported = getattr(exc, "mambadna_report", None)
    if getattr(exc, "quiet", False) or reported is False:
        return
    rank, world, _ = env_world()
    if world > 1 and reported is None and rank != 0:
        return
    path = os.environ.get(ERROR_FILE_ENV)
    if world > 1 and path:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # another rank got there first
        except OSError:
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                json.dump({"line": line, "code": exit_code_of(exc)}, fh)
            return
    print(line, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- launcher
def torchrun_env(nproc: int) -> Dict[str, str]:
    """The environment for torchrun and its workers: NVLink multicast off,
    and OMP threads split between the processes unless already set."""
    env = dict(os.environ, **NO_MULTICAST)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, nproc))))
    return env


def torchrun_command(nproc: int, cli_args: List[str]) -> List[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m mambadna.cli ...``"""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "mambadna.cli", *[str(a) for a in cli_args]]


class LaunchedRunFailed(MambaDNAError):
    """The torchrun workers failed: ``line`` is their one-line error, printed as is."""

    def __init__(self, line: str, exit_code: int):
        self.line = line
        self.exit_code = int(exit_code)
        super().__init__(line[len("error: "):] if line.startswith("error: ") else line)


def strip_option(args: List[str], name: str) -> List[str]:
    """``args`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def check_gpus(nproc: int, device: Optional[str]) -> None:
    """``--gpus N``: N processes, one GPU each; on the CPU only with ``--device cpu``."""
    if nproc < 1:
        raise InputError(None, f"--gpus must be >= 1, got {nproc}")
    if str(device or "auto") == "cpu":
        return
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < nproc:
        raise InputError(None, f"--gpus {nproc} but {n} CUDA device(s) are visible "
                               f"(--device cpu runs {nproc} CPU processes instead)")


def launched(gpus: Optional[int], device: Optional[str], cli_args: List[str]) -> bool:
    """``--gpus N`` of a command: with N > 1 (outside torchrun) re-run this
    command (``cli_args``, the arguments after ``mambadna``) under torchrun with
    N processes and return True (the work is done); otherwise False: run here."""
    if not gpus or gpus == 1 or env_world()[1] > 1:
        if gpus is not None:
            check_gpus(gpus, device)
        return False
    check_gpus(gpus, device)
    launch_torchrun(gpus, strip_option(list(cli_args), "--gpus"))
    return True


def launch_torchrun(nproc: int, cli_args: List[str]) -> None:
    """Run ``mambadna <cli_args>`` under torchrun with ``nproc`` processes.

    The workers' stderr passes through until one of them reports the run's
    failure; that line is then raised here as :class:`LaunchedRunFailed`
    (torchrun's own failure report is left out). An interrupt is passed on to
    torchrun, which stops the workers."""
    import signal
    import tempfile

    env = torchrun_env(nproc)
    with tempfile.TemporaryDirectory(prefix="mambadna-launch-") as td:
        err_file = Path(td) / "error.json"
        env[ERROR_FILE_ENV] = str(err_file)
        proc = subprocess.Popen(torchrun_command(nproc, cli_args), env=env, stderr=subprocess.PIPE)

        def forward() -> None:
            out = getattr(sys.stderr, "buffer", None)
            for raw in iter(proc.stderr.readline, b""):
                if err_file.exists():
                    continue  # the failure is known: torchrun's report adds nothing
                if out is not None:
                    out.write(raw)
                    out.flush()
                else:
                    sys.stderr.write(raw.decode(errors="replace"))
                    sys.stderr.flush()

        t = threading.Thread(target=forward, name="mambadna-torchrun-stderr", daemon=True)
        t.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
        finally:
            t.join(timeout=10)
        if err_file.exists():
            try:
                info = json.loads(err_file.read_text())
            except ValueError:
                info = None
            if info:
                raise LaunchedRunFailed(info["line"], info["code"])
        if rc != 0:
            raise LaunchedRunFailed(f"error: torchrun exited with status {rc}", 1)
