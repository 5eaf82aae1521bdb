"""Attributions over the one-hot input: embed_onehot, IG completeness, RC symmetry,
`mambadna attribute` end to end and bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambadna.tokenizer import encode, reverse_complement

SEQ = "ACGTTGCAAGGCTTACGATCGGATCCA"


def _classifier(rc_equivariant=False, seed=0, rc_average=False):
    from mambadna.model.config import ModelConfig
    from mambadna.model.encoder import MambaDNA
    from mambadna.model.heads import HeadConfig, SequenceClassifier

    torch.manual_seed(seed)
    enc = MambaDNA(ModelConfig(d_model=16, n_layers=2, d_state=4, rc_equivariant=rc_equivariant))
    clf = SequenceClassifier(enc, HeadConfig(classes=["neg", "pos"], hidden=[8], rc_average=rc_average))
    with torch.no_grad():  # outputs that move visibly with the bases
        for p in clf.head.parameters():
            p.mul_(10)
    return clf.eval()


@pytest.mark.parametrize("rc", [False, True])
def test_embed_onehot_matches_embed_tokens(rc):
    from mambadna.model.config import ModelConfig
    from mambadna.model.encoder import MambaDNA

    torch.manual_seed(0)
    enc = MambaDNA(ModelConfig(d_model=16, n_layers=1, d_state=4, rc_equivariant=rc))
    ids = torch.as_tensor(encode(SEQ + "N").astype(np.int64))[None]
    x = torch.nn.functional.one_hot(ids, enc.config.vocab_size).float()
    torch.testing.assert_close(enc.embed_onehot(x), enc.embed_tokens(ids), rtol=0, atol=0)


def test_integrated_gradients_completeness_and_outputs():
    from mambadna.inference.attribution import Attributor

    clf = _classifier()
    ids = torch.as_tensor(np.stack([encode(SEQ), encode(SEQ[::-1])]).astype(np.int64))
    at = Attributor(clf, device="cpu")
    a, fx, f0 = at.attribute_batch(ids, "ig", n_steps=48, baseline="uniform")
    assert a.shape == (2, len(SEQ), 4)
    with torch.no_grad():  # f(x) is the head's logit of the positive class
        torch.testing.assert_close(fx, clf(ids)[:, 0].float(), rtol=1e-5, atol=1e-5)
    delta = (fx - f0).numpy()
    assert np.abs(delta).min() > 0.1
    np.testing.assert_allclose(a.sum((1, 2)).numpy(), delta, rtol=0.03, atol=0.02)
    # input x gradient lives on the sequence's own bases; saliency does not
    ixg, _, _ = at.attribute_batch(ids, "ixg")
    sal, _, _ = at.attribute_batch(ids, "saliency")
    onehot = torch.nn.functional.one_hot(ids - 7, 4).bool()
    assert (ixg[~onehot] == 0).all() and (sal[~onehot] != 0).any()
    torch.testing.assert_close(ixg[onehot], sal[onehot])


@pytest.mark.parametrize("method", ["ig", "saliency", "ixg"])
def test_rc_equivariant_attributions_are_rc_symmetric(method):
    from mambadna.inference.attribution import attribute

    ids = encode(SEQ).astype(np.int64)
    rc = reverse_complement(torch.as_tensor(ids)).numpy()
    for clf in (_classifier(rc_equivariant=True), _classifier(rc_average=True)):  # Caduceus-PS, and -Ph
        a = attribute(clf, np.stack([ids, rc]), method, n_steps=4, device="cpu")
        # reversed positions, and A,C,G,T -> T,G,C,A: the complement
        np.testing.assert_allclose(a[1][::-1, ::-1], a[0], atol=1e-5, rtol=1e-4)
        assert np.abs(a[0]).max() > 1e-3


@pytest.fixture(scope="module")
def attr_head_dir(tiny_model_dir, tmp_path_factory):
    from mambadna.components.checkpoint import load_model
    from mambadna.model.heads import HeadConfig, SequenceClassifier, save_classifier

    torch.manual_seed(1)
    clf = SequenceClassifier(load_model(tiny_model_dir), HeadConfig(classes=["non_promoter", "promoter"],
                                                                    hidden=[8]))
    d = tmp_path_factory.mktemp("attr_head")
    save_classifier(clf, d)
    return d


def test_attribute_cli_real_promoters(attr_head_dir, shared_data, run_cli, tmp_path):
    from mambadna.io.labeled import read_fasta_records

    recs = list(read_fasta_records(shared_data / "cnnprom_promoters" / "Ecoli_prom.fa"))[:2]
    fa = tmp_path / "p.fa"
    fa.write_text("".join(f">{n}\n{s}\n" for n, s, _ in recs))
    out, png = tmp_path / "a.npz", tmp_path / "a.png"
    code, _, err = run_cli(["attribute", "--model", attr_head_dir, "--fasta", fa, "--out", out, "--logo", png,
                            "--method", "ig", "--n-steps", 8, "--device", "cpu", "--no-progress"])
    assert code == 0, err
    z = np.load(out)
    assert z["attributions"].shape == (2, 81, 4) and z["onehot"].shape == (2, 81, 4)
    assert list(z["name"]) == [n for n, _, _ in recs] and (z["lengths"] == 81).all()
    assert str(z["method"]) == "ig" and str(z["target"]) == "promoter" and str(z["baseline"]) == "uniform"
    assert (z["onehot"].sum(-1) == 1).all()
    # completeness, loosely at 8 steps (the unit test above checks it tightly)
    delta = z["output"] - z["baseline_output"]
    np.testing.assert_allclose(z["attributions"].sum((1, 2)), delta, rtol=0.2, atol=0.05)
    assert png.stat().st_size > 1000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["no_head", "unwritable", "bed_beyond_end", "bad_method", "bad_target"])
def test_attribute_bad_input(case, attr_head_dir, tiny_model_dir, run_cli, tmp_path):
    outdir = tmp_path / "o"
    outdir.mkdir()
    fa = tmp_path / "s.fa"
    fa.write_text(f">s\n{SEQ}\n")
    out = outdir / "a.npz"
    model, extra = attr_head_dir, ["--fasta", fa]
    if case == "no_head":
        model = tiny_model_dir
    elif case == "unwritable":
        (outdir / "afile").write_text("x")
        out = outdir / "afile" / "a.npz"
    elif case == "bed_beyond_end":
        ref = tmp_path / "g.fa"
        ref.write_text(">chr1\n" + "ACGT" * 25 + "\n")
        bed = tmp_path / "r.bed"
        bed.write_text("chr1\t90\t120\n")
        extra = ["--bed", bed, "--reference", ref]
    elif case == "bad_method":
        extra += ["--method", "deeplift"]
    elif case == "bad_target":
        extra += ["--target", "nope"]
    before = sorted(p.name for p in outdir.iterdir())
    code, _, err = run_cli(["attribute", "--model", model, "--out", out, "--logo", outdir / "a.png",
                            "--device", "cpu", "--no-progress"] + extra)
    assert code == 2, (case, err)
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert sorted(p.name for p in outdir.iterdir()) == before
