"""Baselines trained on exactly the fine-tuning split: a k-mer linear model and
a CNNProm-style CNN.

* ``kmer``: normalised k-mer counts (k = 1..6, both strands when predictions
  are RC-averaged) into a logistic regression (classification) or ridge
  regression, its L2 strength chosen on the validation split. Per-token tasks:
  for every base, the counts of each 3-mer in each of the three frames
  relative to it within ±60 bases (192 features, what codon usage and
  periodicity need), into a logistic regression.
* ``cnn``: CNNProm (Umarov & Solovyev 2017) as described in the issue: one
  convolution of 200 filters of width 21, ReLU, global max-pool, dense 128,
  ReLU, dropout, output; one-hot input; Adam at 1e-3, up to 40 epochs with
  early stopping on the validation split, reverse-complement augmentation and
  averaging (when the fine-tuned model uses them). Per-token tasks: the same
  convolution, then a second one (128 filters of width 21, dilation 4; a
  101-base receptive field) and a per-position output layer.

``run_baselines`` returns, per baseline, the same metric keys as the
fine-tuned model plus its test predictions (for the comparison plot).
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from mambadna.components.fit import Plan, evaluate, fit, predict, score
from mambadna.components.metrics import choose_threshold
from mambadna.model.heads import HeadConfig, Predictor
from mambadna.tokenizer import A, T, reverse_complement

log = logging.getLogger("mambadna")

CNN_EPOCHS = 40
CNN_LR = 1e-3
KMER_MAX_K = 6
TOKEN_K, TOKEN_FLANK = 3, 60
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


# --------------------------------------------------------------------------- CNN
def one_hot(ids: torch.Tensor) -> torch.Tensor:
    """Token ids (B, L) -> (B, 4, L) float one-hot of A, C, G, T (N and
    others: 0.25 each)."""
    x = ids.long() - A
    ok = (x >= 0) & (x <= T - A)
    oh = torch.nn.functional.one_hot(x.clamp(0, 3), 4).float()
    oh = torch.where(ok[..., None], oh, torch.full_like(oh, 0.25))
    return oh.transpose(1, 2).contiguous()


class CNNBaseline(Predictor):
    """CNNProm-style CNN with the prediction interface of the fine-tuned model."""

    def __init__(self, head_cfg: HeadConfig, filters: int = 200, width: int = 21, dense: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        self.head_cfg = head_cfg
        self.conv = nn.Conv1d(4, filters, width, padding=width // 2 if head_cfg.per_token else 0)
        if head_cfg.per_token:
            self.conv2 = nn.Conv1d(filters, dense, width, padding=(width // 2) * 4, dilation=4)
            self.out = nn.Conv1d(dense, head_cfg.n_outputs, 1)
        else:
            self.dense = nn.Linear(filters, dense)
            self.out = nn.Linear(dense, head_cfg.n_outputs)
        self.drop = nn.Dropout(dropout)
        self.width = width

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = one_hot(ids)
        if not self.head_cfg.per_token and x.shape[-1] < self.width:
            x = nn.functional.pad(x, (0, self.width - x.shape[-1]), value=0.25)
        h = torch.relu(self.conv(x))
        if self.head_cfg.per_token:
            h = torch.relu(self.conv2(self.drop(h)))
            return self.out(self.drop(h)).transpose(1, 2)  # (B, L, n_classes)
        h = h.amax(dim=-1)
        h = torch.relu(self.dense(self.drop(h)))
        return self.out(self.drop(h))


def train_cnn(head_cfg: HeadConfig, plan: Plan, data, device, seed: int, progress: bool = False,
              bf16: bool = True) -> Tuple[Any, Dict[str, Any]]:
    """Train the CNN on ``data`` = (seqs_tr, y_tr, seqs_va, y_va, seqs_te).
    Returns (test predictions, info with the best validation metrics)."""
    seqs_tr, y_tr, seqs_va, y_va, seqs_te = data
    torch.manual_seed(seed)
    model = CNNBaseline(head_cfg).to(device)
    stopper, steps = fit(model, [{"params": list(model.parameters()), "lr": CNN_LR}], plan, seqs_tr, y_tr,
                         seqs_va, y_va, device, seed=seed, weight_decay=0.0, progress=progress, desc="cnn",
                         bf16=bf16)
    thr = _threshold(head_cfg.task, y_va, stopper.best_pred)
    pred = predict(model, seqs_te, plan.batch_size * 2, device, plan.rc_average, bf16=False)
    return pred, {"threshold": thr, "val": _val_summary(stopper.best_val), "steps": steps,
                  "best_step": stopper.best_step, "epochs": plan.epochs,
                  "n_parameters": int(sum(p.numel() for p in model.parameters()))}


def cnn_plan(base: Plan, n_train: int, epochs: int = CNN_EPOCHS) -> Plan:
    """CNNProm's protocol on the fine-tuning split: Adam at a constant 1e-3 for
    up to 40 epochs, validation once an epoch, early stopping after 8 epochs
    without improvement (never before 10), the fine-tuned model's batch size,
    metric and RC settings."""
    spe = max(1, -(-n_train // base.batch_size))
    return Plan(total=epochs * spe, every=spe, warmup=0, min_steps=min(10, epochs) * spe, patience=8,
                batch_size=base.batch_size, metric=base.metric, rc_augment=base.rc_augment,
                rc_average=base.rc_average, min_lr_ratio=1.0, steps_per_epoch=spe, epochs=epochs)


# --------------------------------------------------------------------------- k-mer features
def _kmer_codes(ids: np.ndarray, k: int) -> np.ndarray:
    """Index in 0..4^k-1 of the k-mer starting at each position (-1 where it
    holds a base other than A/C/G/T)."""
    c = ids.astype(np.int64) - A
    bad = (c < 0) | (c > 3)
    c = np.where(bad, 0, c)
    n = len(c) - k + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    code = np.zeros(n, dtype=np.int64)
    badw = np.zeros(n, dtype=bool)
    for j in range(k):
        code = code * 4 + c[j:j + n]
        badw |= bad[j:j + n]
    code[badw] = -1
    return code


def kmer_features(seqs: Sequence[np.ndarray], both_strands: bool, max_k: int = KMER_MAX_K) -> np.ndarray:
    """(n, sum_k 4^k) float32: the frequency of every k-mer, k = 1..max_k, per
    sequence (each k normalised to sum 1); with ``both_strands`` the counts of
    the sequence and of its reverse complement are added."""
    dims = [4 ** k for k in range(1, max_k + 1)]
    X = np.zeros((len(seqs), sum(dims)), dtype=np.float32)
    for i, s in enumerate(seqs):
        strands = [s, reverse_complement(s)] if both_strands else [s]
        off = 0
        for k, d in zip(range(1, max_k + 1), dims):
            cnt = np.zeros(d, dtype=np.float64)
            for st in strands:
                code = _kmer_codes(np.asarray(st), k)
                code = code[code >= 0]
                cnt += np.bincount(code, minlength=d)
            tot = cnt.sum()
            X[i, off:off + d] = cnt / tot if tot else 0.0
            off += d
    return X


def token_kmer_features(ids: np.ndarray, k: int = TOKEN_K, flank: int = TOKEN_FLANK) -> np.ndarray:
    """(L, 3 * 4^k) float32 per-base features: for base t, the count of each
    k-mer starting at t + j, |j| <= flank, split by frame (j mod 3), divided by
    the number of k-mers in the window."""
    L = len(ids)
    d = 4 ** k
    code = _kmer_codes(np.asarray(ids), k)
    n = len(code)
    # cumulative counts per (absolute phase, k-mer): C[p][x, m] = #k-mers m at positions < x with pos % 3 == p
    out = np.zeros((L, 3 * d), dtype=np.float32)
    if n == 0:
        return out
    pos = np.arange(n)
    t = np.arange(L)
    lo = np.clip(t - flank, 0, n)
    hi = np.clip(t + flank + 1, 0, n)
    for p in range(3):
        sel = (pos % 3 == p) & (code >= 0)
        onehot = np.zeros((n + 1, d), dtype=np.float32)
        onehot[1:][sel, code[sel]] = 1.0
        cum = np.cumsum(onehot, axis=0)
        counts = cum[hi] - cum[lo]  # (L, d): k-mers of absolute phase p in the window of t
        frame = (p - t) % 3  # frame of phase p relative to t
        for r in range(3):
            rows = frame == r
            out[rows, r * d:(r + 1) * d] = counts[rows]
    width = np.maximum(hi - lo, 1).astype(np.float32)
    return out / width[:, None]


# --------------------------------------------------------------------------- k-mer models
def _standardize(X: np.ndarray):
    mu = X.mean(0)
    sd = X.std(0)
    sd[sd < 1e-8] = 1.0
    return mu, sd


def _fit_logistic(Xtr, ytr, C: float, seed: int):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(Xtr, ytr)


def _proba_full(lr, X, n_classes: int) -> np.ndarray:
    """predict_proba with a column for every class (absent ones: 0)."""
    p = lr.predict_proba(X)
    out = np.zeros((len(X), n_classes))
    out[:, lr.classes_.astype(int)] = p
    return out


def train_kmer(head_cfg: HeadConfig, data, metric: str, both_strands: bool, seed: int = 0
               ) -> Tuple[Any, Dict[str, Any]]:
    """Fit the k-mer model on the training split, choose its L2 strength on the
    validation split (by the fine-tuned model's ``metric``). Returns (test
    predictions, info)."""
    seqs_tr, y_tr, seqs_va, y_va, seqs_te = data
    task, classes = head_cfg.task, head_cfg.classes
    if task == "token":
        return _train_token_kmer(head_cfg, data, metric, seed)
    Xtr, Xva, Xte = (kmer_features(s, both_strands) for s in (seqs_tr, seqs_va, seqs_te))
    mu, sd = _standardize(Xtr)
    Xtr, Xva, Xte = ((X - mu) / sd for X in (Xtr, Xva, Xte))
    best = None
    for C in L2_GRID:
        if task == "regression":
            from sklearn.linear_model import Ridge

            m = Ridge(alpha=1.0 / C).fit(Xtr, y_tr)
            pv = m.predict(Xva)[:, None]
            fn = (lambda m: lambda X: m.predict(X)[:, None])(m)
        elif task == "multilabel":
            ms = []
            for j in range(len(classes)):
                yj = y_tr[:, j].astype(int)
                ms.append(_fit_logistic(Xtr, yj, C, seed) if 0 < yj.sum() < len(yj) else float(yj.mean()))
            fn = (lambda ms: lambda X: np.stack([m.predict_proba(X)[:, 1] if not isinstance(m, float)
                                                 else np.full(len(X), m) for m in ms], 1))(ms)
            pv = fn(Xva)
        else:
            m = _fit_logistic(Xtr, y_tr, C, seed)
            fn = (lambda m: lambda X: _proba_full(m, X, len(classes)))(m)
            pv = fn(Xva)
        vm = evaluate(task, y_va, pv, classes)
        sc = score(vm, metric)
        if best is None or sc > best[0]:
            best = (sc, C, fn, pv, vm)
    _, C, fn, pv, vm = best
    thr = _threshold(task, y_va, pv)
    return fn(Xte), {"threshold": thr, "val": _val_summary(vm), "l2_C": C,
                     "features": f"k-mer frequencies k=1..{KMER_MAX_K}" + (" (both strands)" if both_strands else "")}


def _train_token_kmer(head_cfg: HeadConfig, data, metric: str, seed: int, max_train_bases: int = 300_000):
    seqs_tr, y_tr, seqs_va, y_va, seqs_te = data
    rng = np.random.default_rng(seed)
    total = sum(len(s) for s in seqs_tr)
    frac = min(1.0, max_train_bases / max(total, 1))
    Xs, ys = [], []
    for s, y in zip(seqs_tr, y_tr):
        F = token_kmer_features(s)
        keep = (rng.random(len(s)) < frac) & (y >= 0)
        Xs.append(F[keep])
        ys.append(y[keep])
    X, Y = np.concatenate(Xs), np.concatenate(ys)
    mu, sd = _standardize(X)
    X = (X - mu) / sd
    k = len(head_cfg.classes)

    F_va = [(token_kmer_features(s) - mu) / sd for s in seqs_va]

    def predict_all(m, feats):
        return [_proba_full(m, f, k) for f in feats]

    best = None
    for C in L2_GRID:
        m = _fit_logistic(X, Y, C, seed)
        pv = predict_all(m, F_va)
        vm = evaluate("token", y_va, pv, head_cfg.classes)
        sc = score(vm, metric)
        if best is None or sc > best[0]:
            best = (sc, C, m, vm)
    _, C, m, vm = best
    return predict_all(m, ((token_kmer_features(s) - mu) / sd for s in seqs_te)), {"val": _val_summary(vm), "l2_C": C, "n_train_bases": int(len(Y)),
                                     "features": f"{TOKEN_K}-mer counts per frame within ±{TOKEN_FLANK} bases"}


# --------------------------------------------------------------------------- both
def _threshold(task: str, y_va, pred_va) -> Optional[float]:
    if task != "binary" or pred_va is None:
        return None
    return choose_threshold(y_va, np.asarray(pred_va)[:, 1])[0]


def _val_summary(vm: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    if vm is None:
        return None
    return {k: v for k, v in vm.items() if k != "per_class"}


def run_baselines(which: Sequence[str], head_cfg: HeadConfig, plan: Plan, data, y_te, device, seeds: Sequence[int],
                  progress: bool = False, bf16: bool = True, cnn_epochs: int = CNN_EPOCHS
                  ) -> Dict[str, Dict[str, Any]]:
    """Train the baselines named in ``which`` ('kmer', 'cnn') on ``data`` =
    (seqs_tr, y_tr, seqs_va, y_va, seqs_te) and score them on ``y_te``.

    Returns name -> {"metrics": test metrics + info, "pred": test predictions
    (of the first seed), "runs": per-seed test metrics}. The CNN runs once per
    seed; the k-mer model is deterministic and runs once."""
    from mambadna.components.metrics import summarize_runs

    task, classes = head_cfg.task, head_cfg.classes
    n_tr = len(data[0])
    out: Dict[str, Dict[str, Any]] = {}
    for name in which:
        runs, preds = [], []
        for k, seed in enumerate(seeds if name == "cnn" else seeds[:1]):
            t0 = time.time()
            if name == "cnn":
                pred, info = train_cnn(head_cfg, cnn_plan(plan, n_tr, cnn_epochs), data, device, seed, progress,
                                       bf16)
            else:
                pred, info = train_kmer(head_cfg, data, plan.metric, plan.rc_average, seed)
            thr = info.get("threshold")
            m = evaluate(task, y_te, pred, classes, threshold=0.5 if thr is None else thr)
            m.pop("loss", None)
            m.update(info, seed=seed, time_s=round(time.time() - t0, 2))
            runs.append(m)
            preds.append(pred)
            log.info("baseline %s (seed %d): %s", name, seed, _brief(task, m))
        res = dict(runs[0])
        if len(runs) > 1:
            res["seeds"] = dict(summarize_runs(runs), n=len(runs), values=[r["seed"] for r in runs])
        out[name] = {"metrics": res, "pred": preds[0], "runs": runs}
    return out


def _brief(task: str, m: Dict[str, Any]) -> str:
    keys = ("mse", "pearson", "spearman") if task == "regression" else (
        ("macro_mcc", "macro_f1", "accuracy") if task == "token" else ("mcc", "auroc", "accuracy"))
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if m.get(k) is not None)
