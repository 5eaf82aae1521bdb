"""Faults a run must survive (issue 24): SIGTERM / kill -9 then --resume (bit-identical
on CPU), a second writer on the same output, stale locks, a non-finite loss, a full
disk during a checkpoint write. Small models on CPU."""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mambadna.errors import InputError, TrainingError
from mambadna.model.config import ModelConfig
from mambadna.tasks.pretrain import PretrainConfig, pretrain

REPO = Path(__file__).resolve().parents[1]
GENOME = REPO / "data" / "example_genome.fa"


def _argv(out, *extra):
    # max-steps far away: runs are stopped by a signal or --stop-after, the LR schedule stays the same
    return ["pretrain", GENOME, "--out", out, "--seq-len", 64, "--batch-size", 4, "--max-steps", 100000,
            "--d-model", 8, "--n-layers", 1, "--d-state", 4, "--seed", 5, "--no-progress", *extra]


def _spawn(argv):
    return subprocess.Popen([sys.executable, "-m", "mambadna.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc, timeout=240.0):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _rows(out: Path):
    p = out / "metrics.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines() if l.strip()] if p.exists() else []


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigterm_checkpoints_at_step_boundary_second_writer_refused_resume_bit_identical(tmp_path, run_cli):
    run = tmp_path / "run"
    a = _spawn(_argv(run))
    _wait_for(lambda: len(_rows(run)) >= 2, a)
    # a second writer on the same --out gets a clear error while the first runs, and touches nothing
    code, _, err = run_cli(_argv(run))
    assert code == 2 and f"in use by pid {a.pid}" in err and "lock file" in err, err
    assert a.poll() is None
    a.send_signal(signal.SIGTERM)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 143, err
    last = err.strip().splitlines()[-1]
    m = re.search(r"interrupted \(SIGTERM\): stopped after step (\d+) .*checkpoint (\S+);.*--resume", last)
    assert m, err
    n = int(m.group(1))
    assert Path(m.group(2)).name == f"checkpoint-{n:07d}" and (run / f"checkpoint-{n:07d}" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".*.lock"))

    code, _, err = run_cli(_argv(run, "--resume", "--stop-after", n + 2))
    assert code == 0, err
    ref = tmp_path / "ref"
    code, _, err = run_cli(_argv(ref, "--stop-after", n + 2))
    assert code == 0, err
    _same_weights(run / f"checkpoint-{n + 2:07d}", ref / f"checkpoint-{n + 2:07d}")
    rows, ref_rows = _rows(run), _rows(ref)
    assert [r["step"] for r in rows] == list(range(1, n + 3))  # no duplicate rows for replayed steps
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_kill9_mid_run_then_resume_is_bit_identical(tmp_path, run_cli, caplog):
    run = tmp_path / "run"
    a = _spawn(_argv(run, "--save-every", 2))
    # any complete checkpoint at step >= 4: older ones are pruned (keep 2), so a fast run may pass step 4 unseen
    _wait_for(lambda: any(int(p.name.split("-")[1]) >= 4 and (p / "trainer_state.json").is_file()
                          for p in run.glob("checkpoint-*")), a)
    a.kill()  # SIGKILL: no handler runs, the lock and perhaps a half-written checkpoint stay
    a.wait()
    assert (tmp_path / ".run.lock").is_file()
    done = max(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))
    target = done + 3
    with caplog.at_level(logging.WARNING, logger="mambadna"):
        code, _, err = run_cli(_argv(run, "--save-every", 2, "--resume", "--stop-after", target))
    assert code == 0, err
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert not list(run.glob(".*.tmp")) and not list(tmp_path.glob(".*.lock"))
    ref = tmp_path / "ref"
    code, _, err = run_cli(_argv(ref, "--save-every", 2, "--stop-after", target))
    assert code == 0, err
    _same_weights(run / f"checkpoint-{target:07d}", ref / f"checkpoint-{target:07d}")
    assert [r["step"] for r in _rows(run)] == list(range(1, target + 1))


def _cfg(out, **kw):
    base = dict(genome=str(GENOME), out=str(out), seq_len=64, batch_size=4, max_steps=6, lr=3e-3,
                model=ModelConfig(d_model=16, n_layers=1, d_state=4), save_every=2, log_every=1,
                progress=False, seed=3, eval_every=100)
    base.update(kw)
    return PretrainConfig.of(**base)


def test_layer_chunked_resume_is_bit_identical(tmp_path):
    kw = dict(layer_chunk=24, max_steps=4, model=ModelConfig(d_model=8, n_layers=1, d_state=4))
    pretrain(_cfg(tmp_path / "full", **kw))
    pretrain(_cfg(tmp_path / "part", stop_after=2, **kw))
    pretrain(_cfg(tmp_path / "part", resume=True, **kw))
    _same_weights(tmp_path / "full", tmp_path / "part")


def test_fresh_run_refuses_old_run_and_resume_checks_configuration(tmp_path):
    out = tmp_path / "r"
    pretrain(_cfg(out, max_steps=2))
    with pytest.raises(InputError, match="holds another run's checkpoints"):
        pretrain(_cfg(out, max_steps=4))
    with pytest.raises(InputError, match=r"another configuration: lr \(checkpoint 0.003, now 0.001\)"):
        pretrain(_cfg(out, max_steps=4, resume=True, lr=1e-3))
    with pytest.raises(InputError, match="model shape in checkpoint differs.*d_model 16 \\(now 32\\)"):
        pretrain(_cfg(out, max_steps=4, resume=True, model=ModelConfig(d_model=32, n_layers=1, d_state=4)))
    (out / "notes.txt").write_text("mine\n")
    res = pretrain(_cfg(out, max_steps=2, overwrite=True, seed=4))  # afresh: the old run's files go, mine stay
    assert res["step"] == 2 and (out / "notes.txt").read_text() == "mine\n"
    assert json.loads((out / "config.json").read_text())["pretrain"]["seed"] == 4


def test_resume_beyond_max_steps_is_refused(tmp_path):
    out = tmp_path / "r"
    pretrain(_cfg(out, max_steps=4))
    with pytest.raises(InputError, match="at step 4, beyond --max-steps 2"):
        pretrain(_cfg(out, max_steps=2, resume=True))


def test_non_finite_loss_names_step_and_window_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from mambadna.model.encoder import MambaDNA

    real = MambaDNA.forward
    calls = {"n": 0}

    def poisoned(self, x, *a, **k):  # from step 3 on, windows whose first token is G give NaN
        out = real(self, x, *a, **k)
        if self.training:
            calls["n"] += 1
        if calls["n"] >= 3:
            bad = (x[:, 0] == 9).view(-1, *([1] * (out.dim() - 1)))
            out = torch.where(bad, torch.full_like(out, float("nan")), out)
        return out

    monkeypatch.setattr(MambaDNA, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError) as e:
        pretrain(_cfg(out, max_steps=50))
    msg = str(e.value)
    step = int(re.search(r"at step (\d+)", msg).group(1))
    assert step >= 3 and "non-finite loss (nan)" in msg, msg
    assert re.search(r"window chr[AB]:\d+-\d+ \([+-]\) of .*example_genome.fa \(sample \d+", msg), msg
    good = f"checkpoint-{(step - 1) // 2 * 2:07d}"
    assert f"last good checkpoint: {out / good}" in msg and "--resume" in msg
    w = load_file(str(out / good / "model.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in w.values())
    assert not (out / "model.safetensors").exists()


def test_full_disk_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import mambadna.tasks.pretrain as tr

    real = tr.save_trainer_state
    calls = {"n": 0}

    def full(directory, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (step 4) hits a full disk half-way
            (Path(directory) / "trainer_state.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return real(directory, *a, **k)

    monkeypatch.setattr(tr, "save_trainer_state", full)
    out = tmp_path / "full"
    with pytest.raises(TrainingError, match=r"cannot write checkpoint .*checkpoint-0000004 \(No space left on "
                                            r"device\); the previous checkpoint .*checkpoint-0000002 is intact"):
        pretrain(_cfg(out))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", "."))) == ["checkpoint-0000002"]
    monkeypatch.setattr(tr, "save_trainer_state", real)
    res = pretrain(_cfg(out, resume=True))  # the kept checkpoint is whole: the run goes on from it
    assert res["step"] == 6


# --------------------------------------------------------------------------- output checks and locks
def test_prepare_output_rules(tmp_path):
    from mambadna.io.files import atomic_dir, prepare_output, release_output_locks

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    try:
        with pytest.raises(InputError, match="same path as the input"):
            prepare_output(model, "dir", inputs=[model], command="finetune")
        with pytest.raises(InputError, match="contains the input"):
            prepare_output(tmp_path, "dir", inputs=[model], command="finetune")
        own = tmp_path / "ft"
        own.mkdir()
        (own / "config.json").write_text(json.dumps({"model_type": "mambadna", "finetune": {}}))
        prepare_output(own, "dir", command="finetune")  # its own earlier output: may be replaced
        with atomic_dir(own) as tmp:
            (tmp / "x").write_text("new")
        assert (own / "x").read_text() == "new" and not (own / "config.json").exists()
        release_output_locks()
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "data.txt").write_text("keep")
        with pytest.raises(InputError, match="refusing to overwrite"):
            prepare_output(foreign, "dir", command="finetune")
        with pytest.raises(InputError, match="refusing to replace a folder this run did not create"):
            with atomic_dir(foreign):  # the safety net: without prepare_output, nothing is replaced
                pass
        assert (foreign / "data.txt").read_text() == "keep"
        prepare_output(foreign, "dir", overwrite=True, command="finetune")  # --overwrite: allowed
        tsv = tmp_path / "s.tsv"
        tsv.write_text("contig\tpos\tid\tref\talt\tallele\tkind\tllr\n")
        prepare_output(tsv, "file", command="classify")  # an earlier classify TSV
        tsv.write_text("my,own,table\n")
        release_output_locks()
        with pytest.raises(InputError, match="already exists"):
            prepare_output(tsv, "file", command="classify")
    finally:
        release_output_locks()
    assert not list(tmp_path.glob(".*.lock"))


def test_lock_owner_stale_and_live(tmp_path, caplog):
    from mambadna.io.files import OutputLock, acquire_output_lock, release_output_locks

    target = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = OutputLock(target)
    lock.path.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with caplog.at_level(logging.WARNING, logger="mambadna"):
        acquire_output_lock(target, "embed")  # the owner is gone: taken over
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    release_output_locks()
    assert not lock.path.exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.path.write_text(json.dumps({"pid": live.pid, "host": os.uname().nodename, "command": "embed"}))
        with pytest.raises(InputError, match=f"in use by pid {live.pid} .*mambadna embed"):
            acquire_output_lock(target, "embed")
        assert json.loads(lock.path.read_text())["pid"] == live.pid  # the live owner's lock is left alone
    finally:
        live.kill()
        live.wait()
        lock.path.unlink()


def test_check_finite_refuses_nan_outputs(tmp_path):
    import numpy as np

    from mambadna.io.files import check_finite

    check_finite(np.ones((2, 3), dtype=np.float32), tmp_path / "e.npz")
    with pytest.raises(TrainingError, match="e.npz: 1 non-finite value"):
        check_finite(np.array([1.0, np.nan]), tmp_path / "e.npz", "embeddings")


# --------------------------------------------------------------------------- fine-tuning: kill -9, SIGTERM, --resume
def _ft_model_and_data(d: Path):
    """A tiny random-init model (no pretraining needed: faults, not accuracy, are tested) and a
    binary motif table."""
    import numpy as np

    from mambadna.components.checkpoint import save_model
    from mambadna.model.encoder import MambaDNA

    torch.manual_seed(0)
    (d / "model").mkdir()
    save_model(MambaDNA(ModelConfig(d_model=8, n_layers=1, d_state=4)), d / "model")
    rng = np.random.default_rng(0)
    rows = ["name,sequence,label"]
    for i in range(64):
        s = list(rng.choice(list("ACGT"), 32))
        if i % 2:
            p = int(rng.integers(0, 24))
            s[p:p + 8] = list("GGGGGGGG")
        rows.append(f"s{i},{''.join(s)},{i % 2}")
    (d / "toy.csv").write_text("\n".join(rows) + "\n")
    return d / "model", d / "toy.csv"


def _ft_argv(inputs, out, *extra):
    model, train = inputs
    return ["finetune", "--model", model, "--train", train, "--out", out, "--max-steps", 12, "--batch-size", 8,
            "--eval-every", 4, "--save-every", 2, "--seeds", 2, "--seed", 3, "--no-progress", *extra]


def _ft_cli(argv, timeout=600):
    """One finetune command in a fresh process with one thread: the reference, the interrupted run and
    its resume all compute in the same kind of process (the test process's own state, left by earlier
    tests, must not enter a bit-for-bit comparison). Returns (exit code, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "mambadna.cli", *map(str, argv)], capture_output=True, text=True,
                       env=env, timeout=timeout)
    return r.returncode, r.stderr


@pytest.fixture(scope="module")
def ft_reference(tmp_path_factory):
    """The inputs and the uninterrupted run (same options) that interrupted runs must reproduce."""
    d = tmp_path_factory.mktemp("ftref")
    inputs = _ft_model_and_data(d)
    code, err = _ft_cli(_ft_argv(inputs, d / "ref"))
    assert code == 0, err
    return inputs, d / "ref"


def _ft_checkpoints(out: Path, seed: int, min_step: int):
    """Complete step checkpoints of ``seed`` at a step >= min_step (older ones are pruned: never wait
    for one step number)."""
    found = []
    for p in (out / "checkpoints").glob(f"seed-{seed}-step-*"):
        if int(p.name.rsplit("-", 1)[1]) >= min_step and (p / "trainer_state.json").is_file():
            found.append(p)
    return found


def _same_finetune(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "head.safetensors"):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys(), name
        for k in wa:
            assert torch.equal(wa[k], wb[k]), (name, k)
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (a, b))
    ma.pop("time_s"), mb.pop("time_s")
    assert ma == mb
    assert (a / "test_predictions.tsv").read_text() == (b / "test_predictions.tsv").read_text()
    assert not (a / "checkpoints").exists()  # the finished outputs replaced the run folder


def test_finetune_kill9_in_second_seed_then_resume_is_bit_identical(tmp_path, ft_reference, one_thread):
    inputs, ref = ft_reference
    run = tmp_path / "run"
    a = subprocess.Popen([sys.executable, "-m", "mambadna.cli", *map(str, _ft_argv(inputs, run))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread)
    # the first seed (3) finished and the second (4) past a checkpoint: both kinds of state are resumed
    _wait_for(lambda: (run / "checkpoints" / "seed-3" / "result.json").is_file()
              and _ft_checkpoints(run, 4, 2), a)
    a.kill()  # SIGKILL: no handler runs; the lock and perhaps a half-written checkpoint stay
    a.wait()
    assert (tmp_path / ".run.lock").is_file() and not (run / "model.safetensors").exists()
    code, err = _ft_cli(_ft_argv(inputs, run, "--resume"))
    assert code == 0, err
    msgs = err.splitlines()
    assert any("stale lock" in m for m in msgs), msgs
    assert any(m.startswith("seed 3: finished earlier") for m in msgs), msgs
    assert any(re.match(r"seed 4: resuming at step \d+ from .*seed-4-step-", m) for m in msgs), msgs
    _same_finetune(run, ref)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no lock, no temporary folders


def test_finetune_sigterm_checkpoints_exits_143_and_resume_is_bit_identical(tmp_path, ft_reference, one_thread,
                                                                           run_cli):
    inputs, ref = ft_reference
    run = tmp_path / "run"
    a = subprocess.Popen([sys.executable, "-m", "mambadna.cli", *map(str, _ft_argv(inputs, run))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one_thread)
    _wait_for(lambda: _ft_checkpoints(run, 3, 2), a)
    a.send_signal(signal.SIGTERM)
    _, err = a.communicate(timeout=120)
    assert a.returncode == 143, err
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(r"interrupted \(SIGTERM\): stopped after step (\d+) of 12 \(seed ([34]), run [12] of 2\); "
                     r"checkpoint (\S+); continue with the same command plus --resume", last)
    if m:  # the signal came during a seed's steps (seed 3's, unless the box stalled between the poll and the kill)
        n, seed, ck = int(m.group(1)), int(m.group(2)), Path(m.group(3))
        assert ck == run / "checkpoints" / f"seed-{seed}-step-{n:07d}"
        assert (ck / "trainer_state.safetensors").is_file()
    else:  # between a seed's steps and its record: the finished seeds and the step checkpoints are kept
        assert re.fullmatch(r"interrupted \(SIGTERM\): the checkpoints in \S+ are kept \(.*\); continue with the "
                            r"same command plus --resume", last), err
        ck = run / "checkpoints"
    assert not list(tmp_path.glob(".*.lock"))
    # a fresh run is refused (it would lose the checkpoints); a resume with other options names the difference
    code, _, err = run_cli(_ft_argv(inputs, run))
    assert code == 2 and "unfinished finetune run" in err and "--resume" in err, err
    code, _, err = run_cli(_ft_argv(inputs, run, "--resume", "--lr", 1e-3))
    lines = [l for l in err.splitlines() if l.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "another configuration: lr (checkpoint 0.0003, now 0.001)" in lines[0], err
    assert ck.is_dir()
    code, err = _ft_cli(_ft_argv(inputs, run, "--resume"))
    assert code == 0, err
    _same_finetune(run, ref)


def _ft_cfg(inputs, out, **kw):
    from mambadna.tasks.finetune import FinetuneConfig

    base = dict(model=str(inputs[0]), train=str(inputs[1]), out=str(out), max_steps=12, batch_size=8, eval_every=4,
                save_every=3, seed=3, progress=False)
    base.update(kw)
    return FinetuneConfig(**base)


def _sigterm_at(monkeypatch, step: int, seed: int) -> None:
    """SIGTERM to this process while ``seed``'s run is at ``step`` (in the loop, before its boundary)."""
    from mambadna.tasks import finetune as ft

    real = ft._StepCheckpoint.step_done

    def step_done(self, s, total, state):
        if s == step and self.seed == seed:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, s, total, state)

    monkeypatch.setattr(ft._StepCheckpoint, "step_done", step_done)


@pytest.mark.parametrize("mode", ["freeze", "probe"])
def test_finetune_frozen_and_probe_resume_after_sigterm(tmp_path, ft_reference, one_thread, monkeypatch, mode):
    """In process: the cached-feature head loop (--freeze) stops at the step boundary and resumes bit for bit;
    a probe (no steps) is interrupted between seeds and keeps the finished one."""
    from mambadna.errors import Interrupted
    from mambadna.tasks.finetune import finetune

    inputs, _ = ft_reference
    kw = dict(freeze=True, head_lr=1e-2, seeds=2) if mode == "freeze" else dict(probe=True, seeds=2)
    ref = finetune(_ft_cfg(inputs, tmp_path / "ref", **kw))
    run = tmp_path / "run"
    if mode == "freeze":
        _sigterm_at(monkeypatch, 5, seed=4)
        with pytest.raises(Interrupted, match=r"stopped after step 5 of 12 \(seed 4, run 2 of 2\); checkpoint "
                                              r".*seed-4-step-0000005; .*--resume"):
            finetune(_ft_cfg(inputs, run, **kw))
    else:
        import mambadna.tasks.finetune as ft

        real = ft._Checkpoints._write

        def write(self, target, fill):  # the signal arrives while the first seed is being recorded
            if target.name == "seed-3":
                os.kill(os.getpid(), signal.SIGTERM)
            return real(self, target, fill)

        monkeypatch.setattr(ft._Checkpoints, "_write", write)
        with pytest.raises(Interrupted, match=r"1 of 2 seed\(s\) finished.*--resume"):
            finetune(_ft_cfg(inputs, run, **kw))
    monkeypatch.undo()
    assert (run / "checkpoints" / "seed-3" / "result.json").is_file()
    got = finetune(_ft_cfg(inputs, run, resume=True, **kw))
    for m in (got, ref):
        m.pop("time_s")
    assert json.loads(json.dumps(got)) == json.loads(json.dumps(ref))
    _same_finetune(run, tmp_path / "ref")


def test_finetune_resume_checks_data_and_model_fresh_run_refuses_checkpoints(tmp_path, ft_reference, one_thread,
                                                                             monkeypatch):
    from mambadna.errors import Interrupted
    from mambadna.tasks.finetune import finetune

    (model, train), _ = ft_reference
    run = tmp_path / "run"
    kw = dict(freeze=True, seeds=1)
    _sigterm_at(monkeypatch, 3, seed=3)
    with pytest.raises(Interrupted):
        finetune(_ft_cfg((model, train), run, **kw))
    monkeypatch.undo()
    # the same data under another name resumes (inputs are compared by content); changed data does not
    moved = tmp_path / "moved.csv"
    moved.write_text(train.read_text())
    changed = tmp_path / "changed.csv"
    changed.write_text(train.read_text().replace(",1\n", ",0\n", 1))
    with pytest.raises(InputError, match=r"run.json: was written for other training data .*--overwrite"):
        finetune(_ft_cfg((model, changed), run, resume=True, **kw))
    other = tmp_path / "other_model"
    other.mkdir()
    from mambadna.components.checkpoint import load_model, save_model

    m = load_model(model)
    with torch.no_grad():
        m.embedding.weight.add_(1.0)
    save_model(m, other)
    with pytest.raises(InputError, match=r"was written for other base model \(the weights of --model .*other_model"):
        finetune(_ft_cfg((other, moved), run, resume=True, **kw))
    with pytest.raises(InputError, match=r"another configuration: seeds \(checkpoint 1, now 2\)"):
        finetune(_ft_cfg((model, moved), run, resume=True, freeze=True, seeds=2))
    with pytest.raises(InputError, match="holds the checkpoints of an unfinished finetune run.*--resume.*--overwrite"):
        finetune(_ft_cfg((model, moved), run, **kw))
    # a kill between the two renames of the final write: --out sits in .run.<8>.old/x beside a new .tmp
    (tmp_path / ".run.abcd1234.old").mkdir()
    os.replace(run, tmp_path / ".run.abcd1234.old" / "x")
    (tmp_path / ".run.efgh5678.tmp").mkdir()
    assert finetune(_ft_cfg((model, moved), run, resume=True, **kw))["n_train"] > 0
    assert not (run / "checkpoints").exists() and (run / "model.safetensors").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]
    # --overwrite over an unfinished run starts afresh; --resume without checkpoints starts from the beginning
    _sigterm_at(monkeypatch, 3, seed=3)
    with pytest.raises(Interrupted):
        finetune(_ft_cfg((model, moved), run, **kw))
    monkeypatch.undo()
    a = finetune(_ft_cfg((model, moved), run, overwrite=True, **kw))
    b = finetune(_ft_cfg((model, moved), tmp_path / "fresh", resume=True, **kw))
    assert a["auroc"] == b["auroc"] and a["history"] == b["history"]
