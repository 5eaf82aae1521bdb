"""Sharded embed / classify through torchrun on CPU (two gloo processes): the same
bytes as one process, no output when a rank fails mid-run, resume from finished shards."""
from __future__ import annotations

import gzip
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

WINDOW = 64
SHARD = 3  # records per shard: the 18 records make 6 shards, 3 per rank
# the subset of tests/test_classify.py: SNVs, indels, two multi-allelic records, an SV
SUBSET = list(range(0, 12)) + [14, 53, 309, 578, 667, 668]


@pytest.fixture(scope="module")
def vcf_parts(brca1):
    text = brca1[0].read_text().splitlines()
    return [l for l in text if l.startswith("#")], [l for l in text if l and not l.startswith("#")]


@pytest.fixture(scope="module")
def subset_vcf(tmp_path_factory, vcf_parts):
    header, body = vcf_parts
    p = tmp_path_factory.mktemp("vcf") / "subset.vcf"
    p.write_text("\n".join(header + [body[i] for i in SUBSET]) + "\n")
    return p


def _classify_args(model, vcf, ref, out: Path):
    return ["classify", "--model", model, "--vcf", vcf, "--reference", ref, "--out", out / "s.tsv",
            "--vcf-out", out / "s.vcf.gz", "--window", WINDOW, "--batch-size", 5, "--shard-size", SHARD,
            "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir, brca1, subset_vcf, tmp_path_factory):
    """The single-process run (in this process) that the sharded runs must reproduce."""
    from mambadna.cli.main import main

    out = tmp_path_factory.mktemp("one")
    try:
        main([str(a) for a in _classify_args(tiny_model_dir, subset_vcf, brca1[1], out)])
    except SystemExit as e:  # typer's standalone mode exits with the command's status
        assert e.code in (0, None)
    return out


def _torchrun(args, env=None, nproc=2):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "mambadna.cli", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


def _hidden(folder: Path):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_torchrun_classify_vcf_same_bytes(tiny_model_dir, brca1, subset_vcf, one_process, tmp_path):
    r = _torchrun(_classify_args(tiny_model_dir, subset_vcf, brca1[1], tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("wrote 19 rows") == 1  # rank 0 only
    for name in ("s.tsv", "s.vcf.gz", "s.vcf.gz.tbi"):
        assert (tmp_path / name).read_bytes() == (one_process / name).read_bytes(), name
    text = gzip.decompress((tmp_path / "s.vcf.gz").read_bytes()).decode()
    body = [l.split("\t")[:5] for l in text.splitlines() if not l.startswith("#")]
    inp = [l.split("\t")[:5] for l in subset_vcf.read_text().splitlines() if not l.startswith("#")]
    assert body == inp  # every record, in the input's order
    assert _hidden(tmp_path) == []  # shards merged and removed, locks released


def test_torchrun_embed_npz_same_bytes(tiny_model_dir, shared_data, tmp_path, run_cli):
    src = (shared_data / "cnnprom_promoters" / "Bacillus_prom.fa").read_text().split(">")[1:41]
    fa = tmp_path / "b40.fa"
    fa.write_text("".join(">" + r for r in src))
    args = ["embed", "--model", tiny_model_dir, "--fasta", fa, "--shard-size", 7, "--device", "cpu", "--no-progress"]
    one = run_cli(args + ["--out", tmp_path / "one.npz"])
    assert one.code == 0, one.err
    r = _torchrun(args + ["--out", tmp_path / "two.npz"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
    assert _hidden(tmp_path) == []


def test_rank_failing_mid_run_leaves_no_output(tiny_model_dir, brca1, vcf_parts, tmp_path):
    """A REF mismatch in record 13 (shard 3 of 4-record shards: rank 1's) while
    rank 0 scores its own shards: one error line, exit 2, nothing written.
    Launched through ``--gpus 2 --device cpu`` (the launcher runs torchrun)."""
    header, body = vcf_parts
    f = body[13].split("\t")
    f[3] = {"A": "C", "C": "G", "G": "T", "T": "A"}[f[3][0]] + f[3][1:]
    bad = tmp_path / "in" / "bad.vcf"
    bad.parent.mkdir()
    bad.write_text("\n".join(header + body[:13] + ["\t".join(f)] + body[14:24]) + "\n")
    out = tmp_path / "out"
    args = ["classify", "--model", tiny_model_dir, "--vcf", bad, "--reference", brca1[1], "--out", out / "s.tsv",
            "--vcf-out", out / "s.vcf.gz", "--window", WINDOW, "--shard-size", 4, "--device", "cpu",
            "--no-progress", "--gpus", 2]
    r = subprocess.run([sys.executable, "-m", "mambadna.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-3000:]
    assert "bad.vcf" in lines[0] and f"ref_brca1:{f[1]}" in lines[0] and "REF" in lines[0]
    assert not out.exists() or list(out.iterdir()) == []  # no output, no shards, no lock


def test_resume_after_killed_run_reuses_shards(tiny_model_dir, brca1, subset_vcf, one_process, tmp_path,
                                               caplog, run_cli):
    args = _classify_args(tiny_model_dir, subset_vcf, brca1[1], tmp_path)
    # each rank is killed (SIGKILL) right after committing its first shard
    r = _torchrun(args, env={"MAMBADNA_TEST_KILL_AFTER_SHARDS": "1"})
    assert r.returncode != 0
    assert not (tmp_path / "s.tsv").exists() and not (tmp_path / "s.vcf.gz").exists()
    shards = tmp_path / ".s.tsv.shards"
    done = sorted(p.name for p in shards.glob("shard-*.json"))
    assert done, list(shards.iterdir())
    with caplog.at_level(logging.INFO, logger="mambadna"):
        res = run_cli(args)  # one process picks up where the two left off
    assert res.code == 0, res.err
    assert any(f"reusing {len(done)} finished shard" in m for m in caplog.messages), caplog.messages
    for name in ("s.tsv", "s.vcf.gz", "s.vcf.gz.tbi"):
        assert (tmp_path / name).read_bytes() == (one_process / name).read_bytes(), name
    assert _hidden(tmp_path) == []
