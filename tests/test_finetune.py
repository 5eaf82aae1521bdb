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
    for cls, fn in (("non", "Bacillus_non_prom.fa"), ("prom", "Bacillus_prom.fa")):
        recs = list(read_fasta_records(src / fn))
        p = tmp_path / f"{cls}.fa"
        p.write_text("".join(f">{n}\n{s}\n" for n, s, _ in recs[:40]))
        files[cls] = p
        test_rows += [f"{s},{cls}" for _, s, _ in recs[40:50]]
    (tmp_path / "test.csv").write_text("\n".join(test_rows) + "\n")
    out = tmp_path / "ft"
    code, _, se = run_cli(["finetune", "--model", tiny_model_dir, "--class", f"non={files['non']}",
                           "--class", f"prom={files['prom']}", "--test", tmp_path / "test.csv", "--out", out,
                           "--freeze", "--max-steps", 4, "--batch-size", 8, "--no-progress"])
    assert code == 0, se
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 20 and m["n_train"] + m["n_val"] == 80 and m["classes"] == ["non", "prom"]


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
