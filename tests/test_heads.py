"""Classification heads: RC handling, save/load, probe folding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mambadna.model.config import ModelConfig
from mambadna.model.heads import (HeadConfig, SequenceClassifier, iter_length_groups, linear_head_from_logistic,
                            load_classifier, pooled_embeddings, predict_proba, save_classifier)
from mambadna.model.encoder import MambaDNA
from mambadna.inference.pooling import POOLED
from mambadna.tokenizer import reverse_complement


def _ids(b=4, L=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, 11, (b, L), generator=g)


def _clf(rc_equivariant=False, pooling="mean", task="binary", classes=("neg", "pos"), seed=0):
    torch.manual_seed(seed)
    enc = MambaDNA(ModelConfig(d_model=16, n_layers=2, d_state=4, rc_equivariant=rc_equivariant))
    return SequenceClassifier(enc, HeadConfig(classes=list(classes), task=task, pooling=pooling,
                                              center_width=6, hidden=[8])).eval()


def test_rc_average_makes_predictions_rc_invariant():
    m = _clf()
    x = _ids()
    xr = reverse_complement(x)
    plain, plain_rc = m.predict_batch(x, rc_average=False), m.predict_batch(xr, rc_average=False)
    assert not torch.allclose(plain, plain_rc, atol=1e-4)  # the plain BiMamba model is not RC-invariant
    avg, avg_rc = m.predict_batch(x, rc_average=True), m.predict_batch(xr, rc_average=True)
    torch.testing.assert_close(avg, avg_rc, atol=1e-6, rtol=0)
    torch.testing.assert_close(avg.sum(1), torch.ones(len(x)))
    torch.testing.assert_close(avg, 0.5 * (plain + plain_rc), atol=1e-6, rtol=0)


def test_rc_equivariant_encoder_per_token_and_pooled():
    m = _clf(rc_equivariant=True)
    x = _ids(3, 30)
    xr = reverse_complement(x)
    with torch.no_grad():
        h, hr = m.encoder.hidden_states(x), m.encoder.hidden_states(xr)
        # per token: exactly related by reversing positions and channels
        torch.testing.assert_close(hr, h.flip(1).flip(2), atol=1e-5, rtol=1e-5)
        for mode in POOLED:
            m.head_cfg.pooling = mode
            f, fr = m.features(x), m.features(xr)
            assert f.shape == (3, 8)
            torch.testing.assert_close(f, fr, atol=1e-5, rtol=1e-5)
        # predictions RC-invariant without any averaging
        torch.testing.assert_close(m.predict_batch(x, rc_average=False), m.predict_batch(xr, rc_average=False),
                                   atol=1e-6, rtol=0)
    # and features still depend on the sequence
    assert not torch.allclose(m.features(x)[0], m.features(x)[1])


@pytest.mark.parametrize("task,classes,n_out", [("binary", ["a", "b"], 1), ("multiclass", ["a", "b", "c"], 3),
                                                 ("multilabel", ["x", "y", "z"], 3)])
def test_tasks_shapes_and_losses(task, classes, n_out):
    m = _clf(task=task, classes=classes)
    x = _ids(5, 20)
    logits = m(x)
    assert logits.shape == (5, n_out)
    p = m.predict_batch(x)
    assert p.shape == (5, len(classes))
    assert torch.all((p >= 0) & (p <= 1))
    if task != "multilabel":
        torch.testing.assert_close(p.sum(1), torch.ones(5))
    tgt = {"binary": torch.tensor([0, 1, 1, 0, 1]), "multiclass": torch.tensor([0, 2, 1, 0, 2]),
           "multilabel": torch.tensor([[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0], [1, 0, 0]])}[task]
    loss = m.loss(logits, tgt)
    loss.backward()
    assert torch.isfinite(loss) and m.head[-1].weight.grad is not None


def test_length_groups_never_pad_and_predict_in_input_order():
    m = _clf()
    seqs = [np.random.default_rng(i).integers(7, 11, n).astype(np.uint8) for i, n in enumerate([10, 12, 10, 7, 12])]
    groups = list(iter_length_groups(seqs, batch_size=1 << 10))
    assert sorted(len(set(len(seqs[i]) for i in sel)) for sel, _ in groups) == [1, 1, 1]
    p = predict_proba(m, seqs, batch_size=2)
    for i, s in enumerate(seqs):  # one at a time gives the same
        one = m.predict_batch(torch.as_tensor(s.astype(np.int64))[None]).numpy()[0]
        np.testing.assert_allclose(p[i], one, atol=1e-6)


def test_save_load_roundtrip(tmp_path):
    from mambadna.components.checkpoint import load_model

    m = _clf(task="multiclass", classes=["a", "b", "c"], pooling="center")
    m.head_cfg.rc_average = True
    save_classifier(m, tmp_path)
    m2 = load_classifier(tmp_path)
    assert m2.head_cfg == m.head_cfg
    x = _ids()
    torch.testing.assert_close(m2.predict_batch(x), m.predict_batch(x))
    enc = load_model(tmp_path)  # the encoder alone still loads as a plain model
    torch.testing.assert_close(enc.hidden_states(x), m.encoder.hidden_states(x))


def test_logistic_folding_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    m = _clf()
    m.head = torch.nn.Sequential(torch.nn.Linear(m.feature_dim, 1))
    seqs = [np.random.default_rng(i).integers(7, 11, 20).astype(np.uint8) for i in range(40)]
    X = pooled_embeddings(m.encoder, seqs)
    y = np.arange(40) % 2
    mu, sd = X.mean(0), X.std(0) + 1e-3
    lr = LogisticRegression(max_iter=500).fit((X - mu) / sd, y)
    linear_head_from_logistic(m, lr.coef_, lr.intercept_, mu, sd)
    p = predict_proba(m, seqs)
    np.testing.assert_allclose(p, lr.predict_proba((X - mu) / sd), atol=1e-4)


def test_token_head_rc_average_and_roundtrip(tmp_path):
    from mambadna.model.heads import predict_tokens

    m = _clf(task="token", classes=["other", "CDS", "tRNA"])
    x = _ids(3, 20)
    logits = m(x)
    assert logits.shape == (3, 20, 3)
    tgt = torch.randint(0, 3, (3, 20))
    tgt[0, :5] = -100  # unlabeled positions take no loss
    loss = m.loss(logits, tgt)
    loss.backward()
    assert torch.isfinite(loss)
    p, p_rc = m.predict_batch(x, rc_average=True), m.predict_batch(reverse_complement(x), rc_average=True)
    torch.testing.assert_close(p, p_rc.flip(1), atol=1e-6, rtol=0)  # position t of x <-> L-1-t of RC(x)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 20))
    save_classifier(m, tmp_path)
    m2 = load_classifier(tmp_path)
    assert m2.head_cfg == m.head_cfg
    seqs = [np.random.default_rng(i).integers(7, 11, n).astype(np.uint8) for i, n in enumerate([12, 20, 12])]
    out = predict_tokens(m2, seqs, rc_average=False)
    assert [o.shape for o in out] == [(12, 3), (20, 3), (12, 3)]
    with pytest.raises(ValueError, match="predict_tokens"):
        predict_proba(m2, seqs)
    # an RC-equivariant encoder gives RC-invariant per-token predictions without averaging
    e = _clf(rc_equivariant=True, task="token", classes=["a", "b"])
    with torch.no_grad():
        torch.testing.assert_close(e.predict_batch(x, rc_average=False),
                                   e.predict_batch(reverse_complement(x), rc_average=False).flip(1),
                                   atol=1e-5, rtol=1e-5)


def test_regression_head_units_threshold_and_roundtrip(tmp_path):
    m = _clf(task="regression", classes=["expression"])
    m.head_cfg.target_mean, m.head_cfg.target_std = 5.0, 2.0
    x = _ids(4, 16)
    with torch.no_grad():
        z = m(x)[:, 0]
        torch.testing.assert_close(m.predict_batch(x, rc_average=False)[:, 0], z * 2.0 + 5.0)
        # the loss standardises the targets: predicting exactly the targets gives zero loss
        assert float(m.loss(m(x), z * 2.0 + 5.0)) < 1e-10
    save_classifier(m, tmp_path)
    m2 = load_classifier(tmp_path)
    assert m2.head_cfg.target_mean == 5.0 and m2.head_cfg.target_std == 2.0
    torch.testing.assert_close(m2.predict_batch(x), m.predict_batch(x))
    # binary decisions use the saved threshold
    from mambadna.model.heads import predicted_labels

    hc = HeadConfig(classes=["neg", "pos"], threshold=0.8)
    assert predicted_labels(np.array([[0.3, 0.7], [0.1, 0.9]]), hc) == ["neg", "pos"]
    with pytest.raises(ValueError):
        HeadConfig(classes=["a", "b"], task="regression")
