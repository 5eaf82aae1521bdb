"""What every benchmark runner shares: repo paths, the device header, timing, peak memory,
markdown tables and the JSON rows that `run.py --compare` joins.

Runners import it as `common` (their own folder is on sys.path when run as scripts).
Library imports stay inside functions, so `--help` works without torch or mambadna.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def _shared(kind: str, env: str) -> Path:
    """`$env`, else ../shared/<kind> beside the repo, else the git-ignored copy .<kind>/ in the repo
    (what the GPU machine gets when `.data` / `.baselines` are carried)."""
    if os.environ.get(env):
        return Path(os.environ[env])
    cands = [REPO.parent / "shared" / kind, REPO / f".{kind}"]
    return next((c for c in cands if c.is_dir()), cands[0])


def data_dir() -> Path:
    return _shared("data", "MAMBADNA_SHARED_DATA")


def baselines_dir() -> Path:
    return _shared("baselines", "MAMBADNA_BASELINES")


# --------------------------------------------------------------------------- arguments
def parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser with the options every runner takes: --device, --quick, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present) | cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat: checks the script (CPU: seconds)")
    ap.add_argument("--json", default=None, help="also write the rows (and device, commit, date) here")
    return ap


def device(name: str = "auto"):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# --------------------------------------------------------------------------- provenance
def commit() -> str:
    """Short commit of the library under test (+dirty); MAMBADNA_COMMIT wins (run.py sets it for
    --compare trees, gpu.sh on machines without .git)."""
    if os.environ.get("MAMBADNA_COMMIT"):
        return os.environ["MAMBADNA_COMMIT"]
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "mambadna", "kernels",
                                "cli"], capture_output=True, text=True, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(dev) -> str:
    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def header(dev, extra: str = "") -> str:
    """One line: device, versions, commit, date (printed first by every runner)."""
    import torch

    try:
        import triton

        tv = f"; triton {triton.__version__}"
    except Exception:  # noqa: BLE001 - triton is optional off Linux x86-64
        tv = ""
    line = (f"# device: {device_name(dev)}; torch {torch.__version__}{tv}; commit {commit()}; "
            f"{_dt.date.today().isoformat()}")
    return line + (f"; {extra}" if extra else "")


# --------------------------------------------------------------------------- timing
def sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_ms(fn, dev, rep: int = 100, quick: bool = False) -> float:
    """Median milliseconds of fn(). CUDA: triton.testing.do_bench (rep: milliseconds of
    repetitions, L2 flushed between calls); CPU: median of wall-clock calls after one warm-up."""
    if dev.type == "cuda":
        from triton.testing import do_bench

        sync(dev)
        rep = min(rep, 20) if quick else rep
        return do_bench(fn, warmup=max(5, rep // 10), rep=rep, return_mode="median")
    fn()
    ts = []
    for _ in range(1 if quick else 5):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def copy_bandwidth(dev):
    """Device copy bandwidth in bytes/s (1 GiB copy), the hardware floor's denominator; None on CPU."""
    if dev.type != "cuda":
        return None
    import torch
    from triton.testing import do_bench

    x = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    return 2 * x.numel() / (ms * 1e-3)


def floor_fraction(nbytes: float, bw, ms: float) -> str:
    """Fraction of the memory floor (bytes / bandwidth) that a time of `ms` reaches, as text."""
    if not bw or not ms or ms != ms:
        return "-"
    return f"{nbytes / bw * 1e3 / ms:.0%}"


def reset_peak(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev) -> float:
    """CUDA: max allocated since reset_peak; CPU: the process's peak RSS."""
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


# --------------------------------------------------------------------------- model
def build_model(d_model: int, n_layers: int, *, d_state: int = 16, bidirectional: bool = True,
                checkpoint: bool = False, layer_chunk: int = 0, residual_bf16: bool = False):
    """A MambaDNA with random weights and the given training-memory options."""
    from mambadna.model import MambaDNA, ModelConfig
    from mambadna.model.config import MemoryConfig

    return MambaDNA(ModelConfig(d_model=d_model, n_layers=n_layers, d_state=d_state, bidirectional=bidirectional),
                    MemoryConfig(checkpoint_layers=checkpoint, layer_chunk=layer_chunk, residual_bf16=residual_bf16))


# --------------------------------------------------------------------------- output
def fmt(v, nd: int = 3) -> str:
    if isinstance(v, float):
        return "-" if v != v else f"{v:.{nd}f}"
    return str(v)


def md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_json(path, rows, dev, **meta) -> None:
    """{"device", "commit", "date", "argv", **meta, "rows": [...]} to path (folders made)."""
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(device=device_name(dev), commit=commit(), date=_dt.datetime.now().isoformat(timespec="seconds"),
               argv=sys.argv[1:], **meta, rows=rows)
    p.write_text(json.dumps(doc, indent=1, default=str) + "\n")
