"""Run benchmarks by name, each with its baseline side by side; optionally the same runner on
another revision of the library, joined into one table (fla's benchmarks/ops/run.py is the model).

    python benchmarks/run.py list
    python benchmarks/run.py scan conv --quick --device cpu
    python benchmarks/run.py scan --compare HEAD~3            # this tree vs HEAD~3's library
    python benchmarks/run.py pretrain -- --long-chunks 524288,262144   # after --: runner options

Writes benchmarks/out/NAME/STAMP-COMMIT.{log,json} (and -compare.md); --out moves the folder.
--compare REV: `git archive REV mambadna kernels cli` into benchmarks/out/rev/SHA/ (or REV is a
folder holding such a tree, e.g. carried to a GPU machine), assembled as an importable package,
and the *current* runner is run again with that package first on PYTHONPATH; rows are joined on
the registry's key. Runners use the public API (mambadna.kernels, mambadna.model, mambadna.Model)
so older revisions run too.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
from registry import REGISTRY  # noqa: E402


def _label(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]", "-", s)


def prepare_tree(rev: str) -> tuple[Path, str]:
    """(package folder to put first on PYTHONPATH, label) for a revision or a folder holding a tree."""
    p = Path(rev)
    if p.is_dir():
        tree, label = p.resolve(), _label(p.name)
    else:
        r = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", "--short", rev], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"--compare {rev}: not a folder and not a revision ({r.stderr.strip()})")
        label = r.stdout.strip()
        tree = common.OUT / "rev" / label
        if not (tree / "mambadna").is_dir():
            tar = subprocess.run(["git", "-C", str(common.REPO), "archive", label, "mambadna", "kernels", "cli"],
                                 capture_output=True, check=True).stdout
            tree.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
                tf.extractall(tree, filter="data")
    pkg = tree / ".pkg"
    if not (pkg / "mambadna").is_dir():  # the layout pyproject's package-dir maps: kernels/ and cli/ inside
        shutil.copytree(tree / "mambadna", pkg / "mambadna")
        for sub in ("kernels", "cli"):
            if (tree / sub).is_dir():
                shutil.copytree(tree / sub, pkg / "mambadna" / sub)
    return pkg, label


def run_one(name: str, args: list, out: Path, label: str, env: dict) -> Path | None:
    """Run one runner, tee its output to out/STAMP-label.log; returns its JSON path (None on failure)."""
    b = REGISTRY[name]
    stem = out / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{_label(label)}"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(HERE / b.script), *args, "--json", str(stem.with_suffix(".json"))]
    print(f"== {name} [{label}]: {' '.join(cmd[1:])}", flush=True)
    with open(stem.with_suffix(".log"), "w") as log:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             cwd=common.REPO)
        for line in p.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = p.wait()
    print(f"== {name} [{label}]: exit {rc}; log {stem.with_suffix('.log')}", flush=True)
    js = stem.with_suffix(".json")
    return js if rc == 0 and js.exists() else None


def load_rows(path: Path) -> list:
    d = json.loads(path.read_text())
    return d["rows"] if isinstance(d, dict) else d


def compare_table(name: str, a: Path, b: Path, la: str, lb: str) -> str:
    """Rows of two runs joined on the registry key: each metric for both and the ratio
    (> 1: the first run is better, whatever the metric's direction)."""
    reg = REGISTRY[name]
    key = lambda r: tuple(str(r.get(k, "")) for k in reg.key)  # noqa: E731
    rb = {key(r): r for r in load_rows(b)}
    heads = list(reg.key)
    for m, _ in reg.metrics:
        heads += [f"{m} {la}", f"{m} {lb}", f"{m} ratio"]
    rows = []
    for r in load_rows(a):
        o = rb.get(key(r), {})
        cells = list(key(r))
        for m, better in reg.metrics:
            x, y = r.get(m, float("nan")), o.get(m, float("nan"))
            ok = isinstance(x, (int, float)) and isinstance(y, (int, float)) and x == x and y == y and x and y
            ratio = (y / x if better == "lower" else x / y) if ok else float("nan")
            cells += [x, y, "-" if ratio != ratio else f"{ratio:.2f}x"]
        rows.append(cells)
    return (f"## {name}: {la} vs {lb} (ratio > 1: {la} better)\n\n" + common.md_table(heads, rows) + "\n")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="benchmarks to run (see `list`), or `list`")
    ap.add_argument("--device", default=None, help="passed to each runner (auto | cuda | cpu)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (CPU: seconds)")
    ap.add_argument("--compare", default=None, metavar="REV", help="also run on REV's library and join the tables")
    ap.add_argument("--out", default=str(common.OUT), help="output folder [benchmarks/out]")
    a = ap.parse_args(argv)
    if not a.names or a.names == ["list"]:
        for n, b in REGISTRY.items():
            print(f"{n:<13} {b.script:<22} {b.what}")
        return 0
    unknown = [n for n in a.names if n not in REGISTRY]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(REGISTRY)}")
    args = (["--device", a.device] if a.device else []) + (["--quick"] if a.quick else []) + extra
    other = prepare_tree(a.compare) if a.compare else None
    me = common.commit()
    failed = []
    for name in a.names:
        out = Path(a.out) / name
        env = dict(os.environ, MAMBADNA_COMMIT=me)
        mine = run_one(name, args, out, me, env)
        if mine is None:
            failed.append(name)
            continue
        if other:
            pkg, label = other
            env_o = dict(os.environ, MAMBADNA_COMMIT=label,
                         PYTHONPATH=os.pathsep.join([str(pkg)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
            theirs = run_one(name, args, out, label, env_o)
            if theirs is None:
                failed.append(f"{name}@{label}")
                continue
            md = compare_table(name, mine, theirs, me, label)
            mine.with_name(mine.stem + "-compare.md").write_text(md)
            print("\n" + md, flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
