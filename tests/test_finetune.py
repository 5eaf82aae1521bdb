"""`mambadna finetune`: learning a toy task, metrics, probe, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mambadna.tasks.finetune import compute_metrics


def _toy_table(path: Path, n=160, L=32, seed=0):
    """Binary motif task: positives carry GGGGGGGG somewhere, negatives are random."""
    rng = np.random.default_rng(seed)
    rows = ["name,sequence,label"]
    for i in range(n):
        s = list(rng.choice(list("ACGT"), L))
        lab = i % 2
        if lab:
            p = int(rng.integers(0, L - 8))
            s[p:p + 8] = list("GGGGGGGG")
        else:
            while "GGGG" in "".join(s):
                s = list(rng.choice(list("ACGT"), L))
        rows.append(f"s{i},{''.join(s)},{'motif' if lab else 'none'}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return _toy_table(tmp_path_factory.mktemp("toy") / "toy.csv")


def test_finetune_learns_motif_task(tiny_model_dir, toy, tmp_path, capsys, run_cli):
    out = tmp_path / "ft"
    code, so, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", out,
                            "--max-steps", 16, "--batch-size", 16, "--lr", 5e-3, "--head-lr", 5e-3,
                            "--eval-every", 4, "--seed", 1, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    for k in ("accuracy", "mcc", "auroc", "auprc", "sensitivity", "specificity", "val", "n_test", "task"):
        assert k in m
    assert m["task"] == "binary" and m["classes"] == ["motif", "none"] and m["positive"] == "none"
    assert m["n_test"] == 32 and m["n_train"] + m["n_val"] == 128
    for k in ("accuracy", "auroc", "auprc", "sensitivity", "specificity"):
        assert 0.0 <= m[k] <= 1.0
    assert -1.0 <= m["mcc"] <= 1.0
    assert m["auroc"] >= 0.9 and m["accuracy"] >= 0.85, m
    assert (out / "confusion_matrix.png").stat().st_size > 1000 and (out / "roc.png").stat().st_size > 1000
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head"]["classes"] == ["motif", "none"] and cfg["head"]["task"] == "binary"
    assert cfg["head"]["pooling"] == "mean"
    # the saved classifier reproduces the reported test predictions
    from mambadna.model.heads import load_classifier, predict_proba
    from mambadna.tokenizer import encode
    import pandas as pd

    pred = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    table = pd.read_csv(toy).set_index("name")
    clf = load_classifier(out)
    p = predict_proba(clf, [encode(table.loc[n, "sequence"]) for n in pred["name"]])
    np.testing.assert_allclose(p[:, 1], pred["p_none"].to_numpy(), atol=1e-4)


def test_probe_and_freeze(tiny_model_dir, toy, tmp_path, capsys, run_cli):
    out = tmp_path / "probe"
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", out, "--probe",
                           "--positive", "motif", "--rc-average", "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "probe" and m["positive"] == "motif" and m["probe_C"]
    assert m["auroc"] >= 0.85, m
    from mambadna.model.heads import load_classifier

    clf = load_classifier(out)
    assert clf.head_cfg.hidden == [] and clf.head_cfg.rc_average
    out2 = tmp_path / "freeze"
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", out2, "--freeze",
                           "--max-steps", 60, "--head-lr", 1e-2, "--pooling", "max", "--no-progress"])
    assert code == 0, se
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["mode"] == "freeze" and m2["val"] is not None and 0 <= m2["auroc"] <= 1


def test_class_fastas_real_promoters_with_given_test(tiny_model_dir, shared_data, tmp_path, capsys, run_cli):
    """--class NAME=FILE on the real CNNProm FASTAs (subset) with an explicit --test table."""
    from mambadna.io.labeled import read_fasta_records

    src = shared_data / "cnnprom_promoters"
    files = {}
    test_rows = ["sequence,label"]
    for cls, fn in (("prom", "Bacillus_prom.fa"), ("non", "Bacillus_non_prom.fa")):
        recs = list(read_fasta_records(src / fn))
        p = tmp_path / f"{cls}.fa"
        p.write_text("".join(f">{n}\n{s}\n" for n, s, _ in recs[:40]))
        files[cls] = p
        test_rows += [f"{s},{cls}" for _, s, _ in recs[40:50]]
    (tmp_path / "test.csv").write_text("\n".join(test_rows) + "\n")
    out = tmp_path / "ft"
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--class", f"prom={files['prom']}",
                           "--class", f"non={files['non']}", "--test", tmp_path / "test.csv", "--out", out,
                           "--freeze", "--max-steps", 4, "--batch-size", 8, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 20 and m["n_train"] + m["n_val"] == 80 and m["classes"] == ["non", "prom"]
    assert m["positive"] == "prom"  # the first --class named is the positive class


def test_compute_metrics_multiclass_and_multilabel():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.eye(3)[y] * 0.7 + 0.1
    m = compute_metrics("multiclass", y, p, ["a", "b", "c"])
    assert m["accuracy"] == 1.0 and m["mcc"] == pytest.approx(1.0) and m["auroc"] == 1.0
    y2 = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p2 = np.array([[0.9, 0.2], [0.1, 0.8], [0.6, 0.4], [0.3, 0.1]])
    m2 = compute_metrics("multilabel", y2, p2, ["x", "y"])
    assert m2["accuracy"] == pytest.approx(7 / 8) and m2["auroc"] == 1.0
    mb = compute_metrics("binary", np.array([0, 0, 1, 1]), np.array([[.9, .1], [.4, .6], [.3, .7], [.8, .2]]), ["n", "p"])
    assert mb["sensitivity"] == 0.5 and mb["specificity"] == 0.5 and mb["auroc"] == 0.75


def test_multilabel_finetune(tiny_model_dir, tmp_path, capsys, run_cli):
    rng = np.random.default_rng(0)
    rows = ["sequence,label"]
    for i in range(48):
        s = "".join(rng.choice(list("ACGT"), 20))
        rows.append(f"{s},{['x', 'y', 'x;y'][i % 3]}")
    (tmp_path / "ml.tsv").write_text("\n".join(r.replace(",", "\t") for r in rows) + "\n")
    out = tmp_path / "ml"
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", tmp_path / "ml.tsv", "--out", out,
                           "--freeze", "--max-steps", 5, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "multilabel" and m["classes"] == ["x", "y"] and 0 <= m["accuracy"] <= 1


def _one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert str(n) in lines[0], lines[0]


def test_bad_inputs(tiny_model_dir, toy, tmp_path, capsys, run_cli):
    out = tmp_path / "out"
    one = tmp_path / "one.csv"
    one.write_text("sequence,label\nACGT,a\nACGA,a\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", one, "--out", out])
    _one_line_error(code, err, one, "one class")
    bad = tmp_path / "bad.csv"
    bad.write_text("sequence,label\nACGT,a\nACXT,b\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", bad, "--out", out])
    _one_line_error(code, err, bad, "forbidden character", "line 3")
    empty_model = tmp_path / "nomodel"
    empty_model.mkdir()
    (empty_model / "config.json").write_text((Path(tiny_model_dir) / "config.json").read_text())
    code, _, err = run_cli(["finetune", "--model", empty_model, "--train", toy, "--out", out])
    _one_line_error(code, err, empty_model, "model.safetensors")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--class", f"a={toy}", "--out", out])
    _one_line_error(code, err, "only one class")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# --------------------------------------------------------------------------- issue 19: recipe, baselines, tasks
def test_recipe_defaults_scale_with_the_data():
    from mambadna.tasks.finetune import FinetuneConfig, default_epochs, make_plan, validation_size

    cfg = FinetuneConfig(model="m", out="o", train="t.csv")
    assert cfg.rc_average is True and cfg.rc_augment is True and cfg.metric == "auto"
    assert FinetuneConfig(model="m", out="o", train="t", rc_average=False).rc_augment is False
    # validation: 10%, but at least min(200, 25%)
    assert validation_size(cfg, 300) == 75 and validation_size(cfg, 1098) == 200 and validation_size(cfg, 3071) == 307
    assert validation_size(FinetuneConfig(model="m", out="o", train="t", val_fraction=0.05), 1000) == 50
    # epochs: 30 for small sets, fewer for large ones
    assert default_epochs(225) == 30 and default_epochs(9000) == 10 and default_epochs(10**6) == 3
    small, large = make_plan(cfg, 225, "auroc"), make_plan(cfg, 10**6, "auroc")
    assert small.total == 30 * 8 and small.every <= small.steps_per_epoch and small.min_steps == 80
    assert small.patience >= 3 and small.warmup == round(0.06 * small.total)
    assert large.total == 20_000 and large.every == 800 and large.patience == 5
    given = make_plan(FinetuneConfig(model="m", out="o", train="t", max_steps=16, eval_every=4, patience=2), 96, "mcc")
    assert (given.total, given.every, given.patience) == (16, 4, 2)
    # weight averaging on; the kept state is chosen after the warm-up and the first 10% of the steps
    assert small.ema == 0.999 and small.select_from == max(small.warmup, small.total // 10)
    assert make_plan(FinetuneConfig(model="m", out="o", train="t", ema=0), 225, "auroc").ema == 0
    with pytest.raises(Exception, match="--ema"):
        FinetuneConfig(model="m", out="o", train="t", ema=1.0)


def test_weight_average_follows_its_recursion_and_swaps_back():
    import torch

    from mambadna.components.fit import WeightAverage

    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    ema = WeightAverage(m, 0.9)
    expect = [p.detach().clone() for p in (m.weight, m.bias)]
    for t in range(1, 41):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p))
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))  # warmed up, then capped at the decay
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, (m.weight, m.bias))]
    live = [p.detach().clone() for p in (m.weight, m.bias)]
    with ema.swapped():
        assert torch.allclose(m.weight, expect[0], atol=1e-5) and torch.allclose(m.bias, expect[1], atol=1e-5)
        assert not torch.allclose(m.weight, live[0])
    assert torch.equal(m.weight, live[0]) and torch.equal(m.bias, live[1])  # the live weights are back
    tensors, meta = ema.state()
    other = WeightAverage(torch.nn.Linear(3, 2), 0.9)
    other.load(tensors, meta)
    assert other.t == 40 and all(torch.equal(a, b) for a, b in zip(other.avg, ema.avg))


def test_early_stopping_keeps_no_state_before_select_from():
    import torch

    from mambadna.components.fit import EarlyStopping

    y = np.array([0, 0, 1, 1])
    perfect = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    worse = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    for select_from, best in ((0, 5), (10, 10)):
        st = EarlyStopping(torch.nn.Linear(1, 1), "binary", y, ["n", "p"], "auroc", patience=5,
                           select_from=select_from, total=30)
        for step, pred in ((5, perfect), (10, worse), (15, worse)):
            st.update(step, 0.0, pred)
        assert st.best_step == best and len(st.history) == 3


def test_choose_threshold_maximises_validation_mcc():
    from mambadna.components.metrics import choose_threshold

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.2, 0.3, 0.32, 0.35, 0.4, 0.45])  # separable, but below 0.5
    thr, mcc = choose_threshold(y, p)
    assert 0.3 < thr < 0.32 and mcc == pytest.approx(1.0)
    assert compute_metrics("binary", y, np.stack([1 - p, p], 1), ["n", "p"], threshold=thr)["mcc"] == 1.0
    assert choose_threshold(np.zeros(4), np.ones(4) * 0.2) == (0.5, 0.0)


def test_defaults_with_seeds_and_baselines(tiny_model_dir, toy, tmp_path, run_cli):
    out = tmp_path / "ft"
    code, so, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", out, "--max-steps", 3,
                            "--seeds", 2, "--baselines", "--cnn-epochs", 2, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    r = m["recipe"]
    assert m["rc_average"] and m["rc_augment"] and r["metric"] == "auroc" and m["val_metric"] == "auroc"
    assert m["n_val"] == 32 and m["n_train"] == 96 and m["n_test"] == 32  # validation floor: 25% of 128
    assert r["total"] == 3 and r["steps_per_epoch"] == 3 and r["every"] == 1
    assert 0 < m["threshold"] < 1 and m["threshold_source"].startswith("maximum MCC")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["head"]["threshold"] == pytest.approx(m["threshold"]) and cfg["head"]["rc_average"]
    assert m["seeds"]["n"] == 2 and m["seeds"]["values"] == [0, 1] and "mcc" in m["seeds"]["sd"]
    assert m["seed"] == m["seeds"]["saved"] and m["ensemble"]["n_models"] == 2
    keys = {"accuracy", "mcc", "auroc", "auprc", "sensitivity", "specificity", "threshold"}
    for name in ("kmer", "cnn"):
        b = m["baselines"][name]
        assert keys <= set(b) and b["n_test"] == m["n_test"] and b["n_train"] == m["n_train"], (name, b)
        assert 0 <= b["auroc"] <= 1
    assert m["baselines"]["cnn"]["seeds"]["n"] == 2
    assert (out / "baselines.png").stat().st_size > 5000
    assert "baseline kmer: " in so and "baseline cnn: " in so and "2 seeds: accuracy=" in so and "ensemble: " in so
    pred = (out / "test_predictions.tsv").read_text().splitlines()[0].split("\t")
    assert pred[-3:] == ["prediction", "ensemble_p_motif", "ensemble_p_none"]


def test_regression_task(tiny_model_dir, tmp_path, run_cli):
    """Target: the GC fraction of the sequence (learnable from composition)."""
    rng = np.random.default_rng(0)
    rows = ["name\tsequence\tgc"]
    for i in range(120):
        gc = rng.uniform(0.2, 0.8)
        s = "".join(rng.choice(list("GCAT"), 40, p=[gc / 2, gc / 2, (1 - gc) / 2, (1 - gc) / 2]))
        rows.append(f"r{i}\t{s}\t{(s.count('G') + s.count('C')) / 40:.4f}")
    (tmp_path / "gc.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "reg"
    code, so, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", tmp_path / "gc.tsv", "--out", out,
                            "--task", "regression", "--label-column", "gc", "--max-steps", 3, "--batch-size", 16, "--baselines",
                            "--cnn-epochs", 2, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "regression" and m["classes"] == ["gc"] and m["val_metric"] == "loss"
    for k in ("mse", "rmse", "pearson", "spearman", "r2", "n_test"):
        assert k in m, k
    assert m["n_test"] == 24 and m["mse"] >= 0 and -1 <= m["pearson"] <= 1
    assert m["baselines"]["kmer"]["pearson"] > 0.9  # GC fraction is linear in 1-mer frequencies
    assert {"mse", "pearson", "spearman"} <= set(m["baselines"]["cnn"])
    assert (out / "scatter.png").stat().st_size > 3000 and (out / "baselines.png").is_file()
    from mambadna.model.heads import load_classifier, predict_proba
    from mambadna.tokenizer import encode
    import pandas as pd

    clf = load_classifier(out)
    assert clf.head_cfg.task == "regression" and 0.2 < clf.head_cfg.target_mean < 0.8
    pred = pd.read_csv(out / "test_predictions.tsv", sep="\t")
    table = pd.read_csv(tmp_path / "gc.tsv", sep="\t").set_index("name")
    p = predict_proba(clf, [encode(table.loc[n, "sequence"]) for n in pred["name"]])
    np.testing.assert_allclose(p[:, 0], pred["prediction"].to_numpy(), atol=1e-4)


def test_token_task_from_gff(tiny_model_dir, tmp_path, run_cli):
    from test_features import write_toy_annotation

    fa, gff, _, _ = write_toy_annotation(tmp_path, n_windows=40, window=64)
    out = tmp_path / "tok"
    code, so, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", gff, "--reference", fa,
                            "--task", "token", "--window", 64, "--max-steps", 2, "--batch-size", 8, "--baselines",
                            "--cnn-epochs", 2,
                            "--no-progress", "--out", out])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "token" and m["classes"] == ["other", "CDS"] and m["window"] == 64
    assert (m["n_train"], m["n_val"], m["n_test"]) == (24, 8, 8) and m["n_test_bases"] == 8 * 64
    for k in ("accuracy", "mcc", "macro_mcc", "macro_f1", "auroc"):
        assert k in m, k
    assert set(m["per_class"]) == {"other", "CDS"} and {"mcc", "f1"} <= set(m["per_class"]["CDS"])
    for name in ("kmer", "cnn"):
        b = m["baselines"][name]
        assert {"macro_mcc", "macro_f1", "per_class"} <= set(b) and b["n_test"] == 8
    assert m["baselines"]["kmer"]["macro_mcc"] > 0.5  # GC-rich codons vs AT-rich background
    assert (out / "test_predictions.bed").read_text().startswith("#contig")
    from mambadna.model.heads import load_classifier

    clf = load_classifier(out)
    assert clf.head_cfg.task == "token" and clf.head_cfg.classes == ["other", "CDS"]


def test_bad_inputs_of_the_new_tasks(tiny_model_dir, tmp_path, run_cli):
    from test_features import write_toy_annotation

    fa, gff, _, _ = write_toy_annotation(tmp_path, n_windows=4)
    out = tmp_path / "out"
    nonnum = tmp_path / "nonnum.csv"
    nonnum.write_text("sequence,label\nACGTACGT,0.5\nACGAACGT,high\nACGTTTGA,1.5\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", nonnum, "--out", out,
                            "--task", "regression"])
    _one_line_error(code, err, nonnum, "line 3", "not a number")
    wrong = tmp_path / "wrong.gff3"
    wrong.write_text("##gff-version 3\nchr9\ttoy\tCDS\t1\t30\t.\t+\t0\tID=x\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", wrong, "--reference", fa, "--out", out,
                            "--task", "token"])
    _one_line_error(code, err, wrong, "chr9", "not in the reference")
    beyond = tmp_path / "beyond.gff3"
    beyond.write_text("##gff-version 3\nchrT\ttoy\tCDS\t400\t700\t.\t+\t0\tID=x\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", beyond, "--reference", fa, "--out", out,
                            "--task", "token"])
    _one_line_error(code, err, beyond, "line 2", "beyond the end")
    one = tmp_path / "one.csv"
    one.write_text("sequence,label\nACGT,a\nACGA,a\nACGG,a\n")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", one, "--out", out, "--baselines"])
    _one_line_error(code, err, one, "one class")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", gff, "--reference", fa, "--out", out,
                            "--task", "token", "--test", one])
    _one_line_error(code, err, "--test", "--task token")
    code, _, err = run_cli(["finetune", "--model", tiny_model_dir, "--train", one, "--out", out, "--window", 64])
    _one_line_error(code, err, "--window")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_cli_passes_only_the_options_given(tiny_model_dir, toy, tmp_path, run_cli, monkeypatch):
    import mambadna.tasks.finetune as ft

    seen = {}

    def fake(cfg):
        seen["cfg"] = cfg
        return {"task": "binary", "accuracy": 1.0}

    monkeypatch.setattr(ft, "finetune", fake)
    code, so, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", tmp_path / "x"])
    assert code == 0, se
    want = ft.FinetuneConfig(model=str(tiny_model_dir), out=str(tmp_path / "x"), train=str(toy))
    assert seen["cfg"] == want
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--train", toy, "--out", tmp_path / "x",
                           "--no-rc-average", "--hidden", 0, "--seeds", 3])
    assert code == 0, se
    c = seen["cfg"]
    assert c.rc_average is False and c.rc_augment is False and c.hidden == [] and c.seeds == 3


# --------------------------------------------------------------------------- issue 24: the positive class
def test_positive_class_rules():
    from mambadna.errors import InputError
    from mambadna.tasks.finetune import FinetuneConfig, positive_class

    def pos(names, **kw):
        kw.setdefault("train", None if "classes" in kw else "t.csv")
        return positive_class(FinetuneConfig(model="m", out="o", **kw), names, "src")[0]

    # --class NAME=FASTA: the first one named, whatever the names
    assert pos(["promoter", "other"], classes=[("promoter", "a.fa"), ("other", "b.fa")]) == "promoter"
    assert pos(["other", "promoter"], classes=[("other", "b.fa"), ("promoter", "a.fa")]) == "other"
    # a label column (classes arrive sorted): the conventional positive
    assert pos(["0", "1"]) == "1" and pos(["-1", "1"]) == "1" and pos(["1", "2"]) == "2"
    assert pos(["false", "true"]) == "true" and pos(["No", "Yes"]) == "Yes" and pos(["neg", "pos"]) == "pos"
    assert pos(["case", "control"]) == "case" and pos(["negative", "tata"]) == "tata"
    assert pos(["pos", "zzz"]) == "pos"
    assert pos(["motif", "none"]) == "none"  # nothing conventional: the second of the sorted labels
    # --positive wins over every rule
    assert pos(["0", "1"], positive="0") == "0"
    assert pos(["promoter", "other"], classes=[("promoter", "a.fa"), ("other", "b.fa")], positive="other") == "other"
    with pytest.raises(InputError, match=r"--positive 'x' is not a class \(0, 1\)"):
        pos(["0", "1"], positive="x")


def _random_model(d: Path) -> Path:
    import torch

    from mambadna.components.checkpoint import save_model
    from mambadna.model.config import ModelConfig
    from mambadna.model.encoder import MambaDNA

    torch.manual_seed(0)
    d.mkdir()
    save_model(MambaDNA(ModelConfig(d_model=8, n_layers=1, d_state=4)), d)
    return d


def test_first_named_class_is_positive_in_metrics_head_predictions_and_vcf_header(tmp_path, run_cli, one_thread):
    """--class promoter=... --class other=...: 'promoter' is the positive class of the metrics, the saved head,
    the predictions and of classify's VCF INFO fields."""
    import pysam

    model = _random_model(tmp_path / "m")
    rng = np.random.default_rng(0)
    for name in ("promoter", "other"):
        recs = "".join(f">{name}{i}\n{''.join(rng.choice(list('ACGT'), 24))}\n" for i in range(12))
        (tmp_path / f"{name}.fa").write_text(recs)
    out = tmp_path / "ft"
    code, so, se = run_cli(["finetune", "--model", model, "--class", f"promoter={tmp_path / 'promoter.fa'}",
                            "--class", f"other={tmp_path / 'other.fa'}", "--out", out, "--freeze", "--max-steps", 2,
                            "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "binary" and m["positive"] == "promoter" and m["classes"] == ["other", "promoter"]
    assert m["positive_rule"] == "the first --class named" and "(positive class: promoter)" in so
    assert json.loads((out / "config.json").read_text())["head"]["classes"] == ["other", "promoter"]
    assert (out / "test_predictions.tsv").read_text().split("\n")[0].split("\t")[2:4] == ["p_other", "p_promoter"]
    # classify: the binary INFO fields are P(promoter)
    ref = Path(__file__).resolve().parents[1] / "data" / "example_genome.fa"
    seq = "".join(l.strip() for l in ref.read_text().split(">chrB")[0].splitlines()[1:])
    vcf = tmp_path / "v.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=chrA>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   + "".join(f"chrA\t{p}\t.\t{seq[p - 1]}\t{'A' if seq[p - 1] != 'A' else 'C'}\t.\t.\t.\n"
                             for p in (100, 200)))
    code, _, se = run_cli(["classify", "--model", out, "--vcf", vcf, "--reference", ref, "--out", tmp_path / "s.tsv",
                           "--vcf-out", tmp_path / "s.vcf.gz", "--window", 32, "--no-progress"])
    assert code == 0, se
    info = pysam.VariantFile(str(tmp_path / "s.vcf.gz")).header.info
    for key in ("MAMBADNA_PREF", "MAMBADNA_PALT", "MAMBADNA_DIFF"):
        assert "promoter, the positive class" in info[key].description, (key, info[key].description)
        assert "other" not in info[key].description


def test_label_column_positive_is_conventional_and_positive_only_for_binary(tmp_path, run_cli, one_thread):
    model = _random_model(tmp_path / "m")
    rng = np.random.default_rng(1)
    rows = ["sequence,label"] + [f"{''.join(rng.choice(list('ACGT'), 20))},{['yes', 'no'][i % 2]}" for i in range(40)]
    (tmp_path / "yn.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "yn"
    code, _, se = run_cli(["finetune", "--model", model, "--train", tmp_path / "yn.csv", "--out", out, "--freeze",
                           "--max-steps", 2, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["positive"] == "yes" and m["classes"] == ["no", "yes"] and m["positive_rule"] == "the label that reads as positive"
    three = tmp_path / "three.csv"
    three.write_text("\n".join(["sequence,label"] + [f"ACGTACGTAC{'ACG'[i % 3]},{'abc'[i % 3]}" for i in range(12)]) + "\n")
    code, _, err = run_cli(["finetune", "--model", model, "--train", three, "--out", tmp_path / "x", "--positive", "a"])
    _one_line_error(code, err, three, "--positive applies to a binary task", "multiclass")
    assert not (tmp_path / "x").exists()
