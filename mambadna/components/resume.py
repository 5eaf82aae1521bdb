"""What a resumable training run needs, shared by the training tasks.

* Trainer state without pickle: tensors in ``trainer_state.safetensors``, the
  rest in ``trainer_state.json``. :func:`optimizer_state` splits an
  optimizer's state into the two (tensor keys ``state.<param>.<name>``, JSON
  ``param_groups`` and ``scalars``: the layout pretraining's checkpoints use),
  :func:`load_optimizer_state` puts it back.
* RNG state: torch's CPU (and CUDA) generators as tensors (``rng.torch``,
  ``rng.cuda.<i>``), a numpy ``Generator`` as JSON.
* :class:`StopRequest`: SIGINT / SIGTERM turned into a stop at the next step
  boundary (the loop writes a checkpoint, then raises
  :class:`~mambadna.errors.Interrupted`); a second signal stops at once.

Everything a loop restores must come back bit for bit: float tensors are
stored at their own dtype, Python floats through JSON (``repr`` round-trips
exactly, ``Infinity``/``NaN`` included).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
import torch

from mambadna.errors import CheckpointError, Interrupted

log = logging.getLogger("mambadna")

TRAINER_TENSORS = "trainer_state.safetensors"
TRAINER_JSON = "trainer_state.json"

Tensors = Dict[str, torch.Tensor]


# --------------------------------------------------------------------------- optimizer
def optimizer_state(optimizer: torch.optim.Optimizer, prefix: str = "") -> Tuple[Tensors, Dict[str, Any]]:
    """(tensors, JSON meta) of an optimizer: tensors ``<prefix>state.<param>.<name>``,
    meta ``{"param_groups": ..., "scalars": {"<param>.<name>": value}}``."""
    sd = optimizer.state_dict()
    tensors: Tensors = {}
    scalars: Dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}state.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Tensors, meta: Dict[str, Any],
                         path: Any, prefix: str = "") -> None:
    """Inverse of :func:`optimizer_state`; CheckpointError naming ``path`` when
    the state does not fit the optimizer's parameters."""
    state: Dict[int, Dict[str, Any]] = {}
    head = f"{prefix}state."
    try:
        for k, v in tensors.items():
            if k.startswith(head):
                pid, name = k[len(head):].split(".", 1)
                state.setdefault(int(pid), {})[name] = v
        for k, v in meta.get("scalars", {}).items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(path, f"optimizer state does not match the model ({e})") from None


# --------------------------------------------------------------------------- random number generators
def rng_state() -> Tensors:
    """torch's CPU generator (``rng.torch``) and each CUDA device's (``rng.cuda.<i>``)."""
    t: Tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            t[f"rng.cuda.{i}"] = s
    return t


def set_rng_state(tensors: Tensors) -> None:
    """Inverse of :func:`rng_state` (missing entries are left as they are)."""
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = sorted((int(k.rsplit(".", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng.cuda."))
    if cuda and torch.cuda.is_available():
        states = [v.to(torch.uint8) for _, v in cuda][:torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(states)


def generator_state(rng: np.random.Generator) -> Dict[str, Any]:
    """A numpy Generator's state as JSON (its 128-bit integers stay exact)."""
    return rng.bit_generator.state


def set_generator_state(rng: np.random.Generator, state: Dict[str, Any]) -> None:
    rng.bit_generator.state = state


# --------------------------------------------------------------------------- arrays as tensors
def arrays_to_tensors(name: str, value: Any) -> Tuple[Tensors, Any]:
    """An array, a list of arrays or None as tensors ``name`` / ``name.<i>`` and
    a JSON note of which it was (for :func:`tensors_to_arrays`)."""
    if value is None:
        return {}, None
    if isinstance(value, (list, tuple)):
        return ({f"{name}.{i}": torch.from_numpy(np.ascontiguousarray(v)) for i, v in enumerate(value)},
                {"list": len(value)})
    return {name: torch.from_numpy(np.ascontiguousarray(value))}, {"array": True}


def tensors_to_arrays(name: str, tensors: Tensors, note: Any) -> Any:
    if note is None:
        return None
    if "list" in note:
        return [tensors[f"{name}.{i}"].numpy() for i in range(int(note["list"]))]
    return tensors[name].numpy()


# --------------------------------------------------------------------------- files
def save_trainer_state(directory: Path, tensors: Tensors, meta: Dict[str, Any]) -> None:
    """Write ``trainer_state.safetensors`` and ``trainer_state.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(directory / TRAINER_TENSORS),
              metadata={"format": "pt", "library": "mambadna"})
    (directory / TRAINER_JSON).write_text(json.dumps(meta, indent=1) + "\n")


def load_trainer_state(directory: Path) -> Tuple[Tensors, Dict[str, Any]]:
    """Read what :func:`save_trainer_state` wrote; CheckpointError when missing or corrupt."""
    from mambadna.io.weights import load_state_dict

    directory = Path(directory)
    path = directory / TRAINER_JSON
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(directory, f"no {TRAINER_JSON}: cannot resume") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"corrupt trainer state ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(path, "corrupt trainer state (not a JSON object)")
    return load_state_dict(directory / TRAINER_TENSORS), meta


# --------------------------------------------------------------------------- signals
class StopRequest:
    """SIGINT / SIGTERM while a run trains.

    Inside :meth:`deferred` blocks (the training loop, checkpoint writes) a
    signal is remembered in ``signum`` and acted on by the loop at the next
    step boundary: it writes a checkpoint and raises
    :class:`~mambadna.errors.Interrupted` (see :meth:`check`). Elsewhere (data
    loading, evaluation that keeps no state) it raises Interrupted at once,
    with ``detail`` saying where the run can continue from. A second signal
    always stops at once. Handlers are installed on the main thread only and
    restored on exit.
    """

    def __init__(self, detail: str = ""):
        self.signum: Optional[int] = None
        self.detail = detail
        self._defer = 0
        self._prev: Dict[int, Any] = {}

    def _handler(self, signum, frame):
        import signal

        if self.signum is not None:
            raise Interrupted(signum, "second signal: stopped at once; " + (self.detail or "no checkpoint"))
        self.signum = signum
        if not self._defer:
            raise Interrupted(signum, self.detail)
        log.warning("%s received: stopping after the current step with a checkpoint (send it again to stop "
                    "at once)", signal.Signals(signum).name)

    @contextlib.contextmanager
    def deferred(self) -> Iterator["StopRequest"]:
        """Signals inside the block wait for :meth:`check` (or the loop's own test of ``signum``)."""
        self._defer += 1
        try:
            yield self
        finally:
            self._defer -= 1

    def check(self, detail: Optional[str] = None) -> None:
        """Raise Interrupted when a signal arrived (``detail``: how to continue)."""
        if self.signum is not None:
            raise Interrupted(self.signum, self.detail if detail is None else detail)

    def __enter__(self) -> "StopRequest":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._prev[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, h in self._prev.items():
            signal.signal(sig, h)
        self._prev = {}


def flat_options(saved: Dict[str, Any], keep: tuple = ("model",)) -> Dict[str, Any]:
    """A run's saved options (``config.json``'s "pretrain" block) by flat name:
    the section tables merged in (runs before the sections saved them flat);
    the tables named in ``keep`` stay nested under their own key."""
    out = {k: v for k, v in saved.items() if not isinstance(v, dict) or k in keep}
    for sec, table in saved.items():
        if isinstance(table, dict) and sec not in keep:
            out.update(table)
    return out
