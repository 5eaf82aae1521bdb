import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mambadna.components.checkpoint import read_config
from mambadna.model.config import ModelConfig
from mambadna.errors import CheckpointError, InputError
from mambadna.tasks.pretrain import PretrainConfig, lr_at, mlm_mask, pretrain, seq_len_schedule

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "data" / "example_genome.fa"


def _cfg(out, **kw):
    base = dict(genome=str(EXAMPLE), out=str(out), seq_len=64, batch_size=4, max_steps=6, lr=3e-3,
                model=ModelConfig(d_model=16, n_layers=1, d_state=4), val_contigs=("chrB",),
                eval_every=3, save_every=2, log_every=1, progress=False, seed=3)
    base.update(kw)
    return PretrainConfig.of(**base)


def test_mlm_mask_statistics():
    ids = torch.randint(7, 11, (20000,))
    ids[:100] = 11  # N is never a target
    inp, lab = mlm_mask(ids, torch.Generator().manual_seed(0), 0.15)
    sel = lab != -100
    assert not sel[:100].any()
    frac = sel.float().mean().item()
    assert 0.13 < frac < 0.17
    masked = (inp[sel] == 3).float().mean().item()
    unchanged = (inp[sel] == ids[sel]).float().mean().item()
    assert 0.77 < masked < 0.83 and 0.10 < unchanged < 0.16  # 10% kept + random draws equal to the original
    assert torch.equal(inp[~sel], ids[~sel])


def test_pretrain_writes_model_metrics_and_curve(tmp_path):
    res = pretrain(_cfg(tmp_path / "run"))
    out = tmp_path / "run"
    for f in ("model.safetensors", "config.json", "metrics.jsonl", "loss_curve.png"):
        assert (out / f).is_file(), f
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all("val_loss" in r for r in rows if r["step"] in (3, 6))
    assert res["val"]["val_loss"] == rows[-1]["val_loss"]
    cfg = read_config(out)  # flat hub-style config.json, read back nested
    assert cfg["model"]["d_model"] == 16 and cfg["step"] == 6
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000004", "checkpoint-0000006"]


def test_resume_reaches_the_same_weights(tmp_path):
    full = tmp_path / "full"
    pretrain(_cfg(full))
    part = tmp_path / "part"
    pretrain(_cfg(part, stop_after=3))  # interrupted after step 3 (checkpoint written there) ...
    assert not (part / "model.safetensors").exists()
    pretrain(_cfg(part, resume=True))  # ... and resumed to step 6
    a = load_file(str(full / "model.safetensors"))
    b = load_file(str(part / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(l)["loss"] for l in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert la == lb


def test_resume_with_corrupt_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "r"
    pretrain(_cfg(out, max_steps=2))
    (out / "checkpoint-0000002" / "trainer_state.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="trainer_state.safetensors: corrupt"):
        pretrain(_cfg(out, max_steps=4, resume=True))
    assert not (out / "checkpoint-0000004").exists()


def test_time_budget_schedule_runs_over_progress():
    cfg = PretrainConfig.of(genome=str(EXAMPLE), lr=1e-3, max_minutes=10, progress=False)
    assert cfg.max_steps > 10**9  # no step cap unless given
    peak, floor = cfg.optim.lr, cfg.optim.lr * cfg.optim.min_lr_ratio
    assert lr_at(0, cfg, 0.01) == pytest.approx(peak * 0.2)  # warm-up over the first 5% of the time
    assert lr_at(500, cfg, 0.05) == pytest.approx(peak)
    assert lr_at(900, cfg, 0.525) == pytest.approx((peak + floor) / 2)
    assert lr_at(10**6, cfg, 1.0) == pytest.approx(floor)
    stepped = PretrainConfig.of(genome=str(EXAMPLE), lr=1e-3, max_minutes=10, warmup_steps=10, max_steps=50)
    assert stepped.max_steps == 50 and lr_at(0, stepped, 0.2) == pytest.approx(1e-4)  # given warm-up steps rule
    for bad, msg in ((dict(max_minutes=-1), "--max-minutes must be >= 0"),
                     (dict(max_minutes=1, seq_len_warmup=True), "needs --seq-len-warmup-steps")):
        with pytest.raises(InputError, match=msg):
            PretrainConfig.of(genome=str(EXAMPLE), **bad)


def test_time_budget_ends_the_run_with_the_schedule_done(tmp_path):
    base = dict(genome=str(EXAMPLE), out=str(tmp_path / "t"), seq_len=64, batch_size=4, lr=3e-3,
                model=ModelConfig(d_model=16, n_layers=1, d_state=4), val_contigs=("chrB",), eval_every=10**6,
                save_every=10**6, log_every=1, progress=False, seed=3, max_minutes=0.05)
    res = pretrain(PretrainConfig.of(**base))
    out = tmp_path / "t"
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) >= 5 and rows[-1]["step"] == res["step"] == len(rows)
    assert "val_loss" in rows[-1]  # the last step validates, as at --max-steps
    lrs = [r["lr"] for r in rows]
    assert lrs[0] < 0.05 * 3e-3  # the schedule starts after set-up and the compiling first step
    top = lrs.index(max(lrs))
    assert all(a >= b for a, b in zip(lrs[top:], lrs[top + 1:]))  # cosine after the peak ...
    assert lrs[-1] < 0.3 * 3e-3  # ... nearly finished when the budget ends
    assert read_config(out)["step"] == res["step"]
    ck = sorted(out.glob("checkpoint-*"))[-1]
    assert json.loads((ck / "trainer_state.json").read_text())["elapsed_s"] > 0
    with pytest.raises(CheckpointError, match="nothing to resume"):
        pretrain(PretrainConfig.of(**{**base, "resume": True}))
    more = pretrain(PretrainConfig.of(**{**base, "resume": True, "max_minutes": 0.1}))  # a larger budget goes on
    assert more["step"] > res["step"]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, more["step"] + 1))


def test_seq_len_warmup_schedule_doubles_to_target():
    cfg = _cfg("x", seq_len=1024, seq_len_warmup=True, seq_len_warmup_start=128, max_steps=100,
               seq_len_warmup_steps=5)
    assert seq_len_schedule(cfg) == [(0, 128), (5, 256), (10, 512), (15, 1024)]


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "mambadna.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("case", ["missing", "not_fasta", "empty", "too_short", "bad_val_contig", "bad_bed"])
def test_pretrain_bad_input_one_line_nonzero_no_checkpoint(tmp_path, case):
    out = tmp_path / "out"
    fa = tmp_path / "g.fa"
    extra = []
    if case == "missing":
        fa = tmp_path / "nope.fa"
    elif case == "not_fasta":
        fa.write_text("hello world\nthis is not a fasta\n")
    elif case == "empty":
        fa.write_text("")
    elif case == "too_short":
        fa.write_text(">c1\nACGTACGTAC\n>c2\nACGT\n")
    else:
        fa.write_text(">c1\n" + "ACGT" * 100 + "\n>c2\n" + "GGCA" * 100 + "\n")
        if case == "bad_val_contig":
            extra = ["--val-contigs", "chrZ"]
        else:
            bed = tmp_path / "r.bed"
            bed.write_text("chrQ\t0\t100\n")
            extra = ["--regions", bed]
    r = _cli("pretrain", fa, "--out", out, "--seq-len", 64, "--max-steps", 2, "--d-model", 8,
             "--n-layers", 1, *extra)
    assert r.returncode != 0
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    named = {"bad_val_contig": "chrZ", "bad_bed": "r.bed"}.get(case, fa.name)
    assert named in lines[0]
    assert not list(out.glob("checkpoint-*")) and not (out / "model.safetensors").exists()


def test_cli_toml_config_and_info(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(f'out = "{tmp_path / "o"}"\nseq_len = 32\nbatch_size = 2\nmax_steps = 2\n'
                    f'save_every = 2\n[model]\nd_model = 8\nn_layers = 1\nbidirectional = false\n')
    r = _cli("pretrain", EXAMPLE, "--config", toml, "--max-steps", 3)  # CLI overrides the file
    assert r.returncode == 0, r.stderr
    cfg = read_config(tmp_path / "o")
    assert cfg["step"] == 3 and cfg["model"]["bidirectional"] is False
    info = _cli("info", tmp_path / "o")
    assert info.returncode == 0 and "parameters:" in info.stdout and "trained steps: 3" in info.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("seq_len = 32\nfoo = 1\n")
    r = _cli("pretrain", EXAMPLE, "--config", bad)
    assert r.returncode == 2 and "unknown option(s): foo" in r.stderr


def test_non_finite_loss_stops_with_clear_message_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import mambadna.tasks.pretrain as tr
    from mambadna.errors import TrainingError

    real = tr.F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **kw):
        calls["n"] += 1
        out = real(*a, **kw)
        return out * float("nan") if calls["n"] >= 4 else out  # steps 1-3 fine (eval off), then NaN

    monkeypatch.setattr(tr.F, "cross_entropy", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at step 4.*checkpoint-0000002"):
        pretrain(_cfg(out, val_contigs=(), eval_every=100))
    assert (out / "checkpoint-0000002" / "model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()


def test_pretrain_on_bam_reads(tmp_path, shared_data):
    bam = shared_data / "alignments" / "ex1" / "ex1.bam"
    res = pretrain(PretrainConfig.of(bam=str(bam), bam_region="chr1", out=str(tmp_path / "bam"), seq_len=36,
                                  batch_size=4, max_steps=2, model=ModelConfig(d_model=8, n_layers=1, d_state=4,
                                                                               bidirectional=False),
                                  progress=False, save_every=2))
    assert res["step"] == 2 and math.isfinite(res["loss"])
    assert (tmp_path / "bam" / "model.safetensors").is_file()


def test_layer_chunk_training_matches_plain_run(tmp_path):
    a = pretrain(_cfg(tmp_path / "plain", max_steps=3, val_contigs=(), save_every=3))
    b = pretrain(_cfg(tmp_path / "chunked", max_steps=3, val_contigs=(), save_every=3, layer_chunk=24))
    assert abs(a["loss"] - b["loss"]) < 1e-5
    wa = load_file(str(tmp_path / "plain" / "model.safetensors"))
    wb = load_file(str(tmp_path / "chunked" / "model.safetensors"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)


def test_layer_chunk_auto_policy(monkeypatch):
    from mambadna.kernels.scan import cpu
    from mambadna.tasks.pretrain import resolve_layer_chunk

    cpu_dev, cuda = torch.device("cpu"), torch.device("cuda")
    if cpu.available():  # the compiled training scan: whole windows
        assert resolve_layer_chunk(-1, cpu_dev, 512) == 0
    monkeypatch.setattr(cpu, "numba", None)  # the reference's gradient: chunks of 256
    assert resolve_layer_chunk(-1, cpu_dev, 512) == 256
    assert resolve_layer_chunk(-1, cpu_dev, 256) == 0
    assert resolve_layer_chunk(-1, cuda, 2**20) == 0
    assert resolve_layer_chunk(0, cpu_dev, 4096) == 0 and resolve_layer_chunk(1024, cuda, 2**20) == 1024


def test_seq_len_warmup_end_to_end_keeps_tokens_per_step(tmp_path):
    pretrain(_cfg(tmp_path / "w", max_steps=4, val_contigs=(), save_every=4, seq_len_warmup=True,
                  seq_len_warmup_start=16, seq_len_warmup_steps=1))
    rows = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    assert [r["seq_len"] for r in rows] == [16, 32, 64, 64]
    assert {r["batch"] * r["seq_len"] for r in rows} == {4 * 64}
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_scan_state_limit_applies_during_pretraining_only(tmp_path, monkeypatch):
    """--scan-state-gib reaches PretrainConfig, bounds what the scans keep for their
    backwards while pretrain runs (0: nothing kept, the backward recomputes), and the
    previous bound is back afterwards."""
    pytest.importorskip("triton")
    from typer.testing import CliRunner

    import mambadna.tasks.pretrain as tr
    from mambadna.cli.main import app
    from mambadna.kernels.scan import triton as ts

    seen = {}
    monkeypatch.setattr(tr, "_pretrain", lambda cfg: seen.setdefault("bound", ts.BUDGET.setting[0]))
    before = ts.BUDGET.setting[0]
    tr.pretrain(_cfg(tmp_path / "a", scan_state_gib=0.5))
    assert seen["bound"] == 1 << 29 and ts.BUDGET.setting[0] == before
    seen.clear()
    tr.pretrain(_cfg(tmp_path / "b"))  # default: the device's 1/8
    assert seen["bound"] is None and ts.BUDGET.setting[0] == before

    got = {}
    monkeypatch.setattr(tr, "launch_or_pretrain", lambda cfg, gpus=None: got.setdefault("cfg", cfg))
    r = CliRunner().invoke(app, ["pretrain", str(EXAMPLE), "--out", str(tmp_path / "c"), "--scan-state-gib", "0"])
    assert r.exit_code == 0, r.output
    assert got["cfg"].memory.scan_state_gib == 0.0


def test_config_sections_round_trip_through_toml_and_flat_names(tmp_path):
    """One option set three ways: flat names (the CLI's), [data]/[optim]/[memory]/[model]
    tables (the TOML torchrun's workers read), and the launcher's own TOML; each option
    lands in its section, an option in the wrong table is refused."""
    from mambadna.tasks.pretrain import _to_toml

    flat = PretrainConfig.of(genome=str(EXAMPLE), seq_len=256, lr=3e-3, d_model=32, layer_chunk=0,
                             gradient_checkpointing=True, max_steps=7, val_contigs=("chrB",))
    assert (flat.data.seq_len, flat.optim.lr, flat.model.d_model, flat.memory.layer_chunk, flat.max_steps) == \
        (256, 3e-3, 32, 0, 7)
    assert flat.memory.checkpoint_layers and flat.data.val_contigs == ("chrB",)
    assert PretrainConfig.of(genome=str(EXAMPLE)).memory.layer_chunk == -1  # default: the trainer picks
    toml = tmp_path / "c.toml"
    toml.write_text(_to_toml(flat.to_dict()))
    assert "[data]" in toml.read_text() and "[optim]" in toml.read_text()
    assert PretrainConfig.from_toml(str(toml)) == flat
    tables = tmp_path / "t.toml"
    tables.write_text(f'max_steps = 7\n[data]\ngenome = "{EXAMPLE}"\nseq_len = 256\nval_contigs = ["chrB"]\n'
                      '[optim]\nlr = 3e-3\n[memory]\nlayer_chunk = 0\ncheckpoint_layers = true\n[model]\nd_model = 32\n')
    assert PretrainConfig.from_toml(str(tables)) == flat
    assert PretrainConfig.from_toml(str(tables), seq_len=512).data.seq_len == 512  # the command line wins
    wrong = tmp_path / "w.toml"
    wrong.write_text(f'[optim]\nseq_len = 256\n[data]\ngenome = "{EXAMPLE}"\n')
    with pytest.raises(InputError, match=r"unknown option\(s\): \[optim\] seq_len"):
        PretrainConfig.from_toml(str(wrong))


def test_resume_reads_a_checkpoint_written_with_flat_options(tmp_path):
    """Checkpoints written before the sections hold the options flat: --resume still
    compares them option by option."""
    from mambadna.errors import CheckpointError
    from mambadna.io.files import jsonable
    from mambadna.tasks.pretrain import _check_resumable

    cfg = _cfg(tmp_path / "r")
    old = jsonable(cfg.flat())
    old["gradient_checkpointing"] = old.pop("checkpoint_layers")
    old["model"] = cfg.model.to_dict()
    _check_resumable(tmp_path, {"pretrain": old}, cfg, 2)  # the same options: fine
    old["lr"] = 1e-2
    with pytest.raises(CheckpointError, match=r"lr \(checkpoint 0.01, now 0.003\)"):
        _check_resumable(tmp_path, {"pretrain": old}, cfg, 2)
