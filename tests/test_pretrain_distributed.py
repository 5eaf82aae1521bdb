"""DDP through torchrun on CPU (gloo): same global batch -> same losses; resume on another world size."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "example_genome.fa"
ARGS = ["--seq-len", "64", "--batch-size", "4", "--d-model", "16", "--n-layers", "1", "--d-state", "4",
        "--device", "cpu", "--save-every", "2", "--lr", "3e-3", "--seed", "5"]


def _run(nproc, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, "-m", "mambadna.cli", "pretrain", str(EXAMPLE), "--out", str(out), *ARGS, *extra]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "mambadna.cli", "pretrain", str(EXAMPLE), "--out", str(out), *ARGS, *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_ranks_match_one_rank_and_resume_across_world_sizes(tmp_path):
    one = _run(1, tmp_path / "one", "--max-steps", "4")
    two = _run(2, tmp_path / "two", "--max-steps", "4")
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)
    wa = load_file(str(tmp_path / "one" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() < 1e-4, k
    # checkpoint written once (rank 0), resumed with a different number of processes
    _run(2, tmp_path / "mixed", "--max-steps", "4", "--stop-after", "2")
    mixed = _run(1, tmp_path / "mixed", "--max-steps", "4", "--resume")
    assert [r["step"] for r in mixed] == [1, 2, 3, 4]
    for a, b in zip(one, mixed):
        assert abs(a["loss"] - b["loss"]) < 1e-4, (a, b)


@pytest.mark.slow
def test_two_ranks_stop_together_under_a_time_budget(tmp_path):
    """Each rank follows the all-reduced clock: they take the same last step (a
    disagreement would leave one rank waiting in an all-reduce until the timeout)."""
    rows = _run(2, tmp_path / "t", "--max-minutes", "0.3", "--save-every", "1000", "--val-fraction", "0.1",
                "--eval-every", "1000")
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 3
    assert "val_loss" in rows[-1] and rows[-1]["lr"] < 0.5 * 3e-3
    assert (tmp_path / "t" / "model.safetensors").is_file()
