"""Evaluation metrics and plots of fine-tuned heads and their baselines.

One place for every task: classification (binary / multiclass / multilabel),
regression and per-token classification, the validation-chosen decision
threshold of binary tasks, and the figures written beside ``metrics.json``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np


def _safe(fn, *a, **k) -> Optional[float]:
    try:
        v = float(fn(*a, **k))
        return v if math.isfinite(v) else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- classification
def compute_metrics(task: str, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                    threshold: float = 0.5) -> Dict[str, Any]:
    """Accuracy, MCC, AUROC, AUPRC (+ sensitivity/specificity for binary).

    y_true: (n,) class indices, or (n, k) 0/1 for multilabel; proba
    (n, n_classes). Multiclass AUROC/AUPRC are one-vs-rest macro averages;
    multilabel accuracy is the per-label mean, MCC/AUROC/AUPRC label macro
    averages. Undefined values (a class absent) are None. Regression and
    token tasks go to :func:`regression_metrics` / :func:`token_metrics`.
    """
    from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix,
                                 matthews_corrcoef, roc_auc_score)

    if task == "regression":
        return regression_metrics(y_true, proba)
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    m: Dict[str, Any] = {"n": int(len(y_true))}
    if task == "binary":
        p = proba[:, 1]
        pred = (p >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
        m.update(accuracy=float(accuracy_score(y_true, pred)),
                 mcc=float(matthews_corrcoef(y_true, pred)),
                 auroc=_safe(roc_auc_score, y_true, p),
                 auprc=_safe(average_precision_score, y_true, p),
                 sensitivity=float(tp / (tp + fn)) if tp + fn else None,
                 specificity=float(tn / (tn + fp)) if tn + fp else None,
                 threshold=float(threshold))
    elif task == "multiclass":
        pred = proba.argmax(1)
        onehot = np.eye(len(classes))[y_true]
        present = onehot.sum(0) > 0
        m.update(accuracy=float(accuracy_score(y_true, pred)),
                 mcc=float(matthews_corrcoef(y_true, pred)),
                 auroc=_safe(roc_auc_score, onehot[:, present], proba[:, present], average="macro"),
                 auprc=_safe(average_precision_score, onehot[:, present], proba[:, present], average="macro"))
    else:
        pred = (proba >= threshold).astype(int)
        yt = y_true.astype(int)
        mccs = [matthews_corrcoef(yt[:, j], pred[:, j]) for j in range(yt.shape[1])]
        ok = [j for j in range(yt.shape[1]) if 0 < yt[:, j].sum() < len(yt)]
        m.update(accuracy=float((pred == yt).mean()),
                 subset_accuracy=float((pred == yt).all(1).mean()),
                 mcc=float(np.mean(mccs)),
                 auroc=_safe(roc_auc_score, yt[:, ok], proba[:, ok], average="macro") if ok else None,
                 auprc=_safe(average_precision_score, yt[:, ok], proba[:, ok], average="macro") if ok else None)
    return m


def choose_threshold(y_true: np.ndarray, p: np.ndarray) -> Tuple[float, float]:
    """The decision threshold on P(positive) that maximises MCC on ``(y_true, p)``
    (a validation split): ``(threshold, mcc)``. Candidates are the midpoints
    between consecutive distinct probabilities; when several give the best MCC
    the middle one of that run is taken (robust on small splits). 0.5 when
    one class is absent or no threshold beats chance."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0 or y.min() == y.max():
        return 0.5, 0.0
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    P, N = int(ys.sum()), int(len(ys) - ys.sum())
    tp = np.cumsum(ys)
    fp = np.cumsum(1 - ys)
    last = np.r_[ps[1:] != ps[:-1], True]  # predict positive for the top k (ties together)
    tp, fp = tp[last].astype(np.float64), fp[last].astype(np.float64)
    cut = ps[last]
    fn, tn = P - tp, N - fp
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.where(den > 0, (tp * tn - fp * fn) / np.where(den > 0, den, 1.0), 0.0)
    best = float(mcc.max())
    if best <= 0:
        return 0.5, best
    idx = np.flatnonzero(mcc >= best - 1e-12)
    k = int(idx[len(idx) // 2])
    nxt = ps[last][k + 1] if k + 1 < len(cut) else 0.0
    thr = float(0.5 * (cut[k] + nxt))
    return thr, best


# --------------------------------------------------------------------------- regression
def regression_metrics(y_true: np.ndarray, pred: np.ndarray) -> Dict[str, Any]:
    """MSE, RMSE, MAE, R², Pearson and Spearman correlations of predictions
    (n,) or (n, 1) against targets (n,)."""
    from scipy.stats import pearsonr, spearmanr

    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    f = np.asarray(pred, dtype=np.float64).reshape(-1)
    err = f - y
    mse = float(np.mean(err ** 2)) if len(y) else None
    var = float(np.var(y)) if len(y) else 0.0
    const = len(y) < 2 or np.ptp(y) == 0 or np.ptp(f) == 0
    return {"n": int(len(y)), "mse": mse, "rmse": None if mse is None else math.sqrt(mse),
            "mae": float(np.mean(np.abs(err))) if len(y) else None,
            "r2": (1.0 - mse / var) if var > 0 and mse is not None else None,
            "pearson": None if const else _safe(lambda: pearsonr(y, f)[0]),
            "spearman": None if const else _safe(lambda: spearmanr(y, f)[0])}


# --------------------------------------------------------------------------- per token
def token_metrics(y_true: Sequence[np.ndarray], proba: Sequence[np.ndarray], classes: Sequence[str],
                  max_auc_bases: int = 2_000_000) -> Dict[str, Any]:
    """Per-base metrics of a token head: ``y_true`` one (L,) class-index array per
    sequence (-100 = unlabeled, skipped), ``proba`` one (L, n_classes) array.

    accuracy and mcc (multiclass MCC over bases), per class one-vs-rest MCC,
    F1, precision, recall, AUROC and support, and their macro means
    (``macro_mcc``, ``macro_f1``, ``auroc``: macro over classes present).
    ``n`` counts bases, ``n_sequences`` sequences."""
    from sklearn.metrics import matthews_corrcoef, precision_recall_fscore_support, roc_auc_score

    y = np.concatenate([np.asarray(a).reshape(-1) for a in y_true]) if len(y_true) else np.zeros(0, int)
    P = np.concatenate([np.asarray(a).reshape(-1, len(classes)) for a in proba]) if len(proba) else \
        np.zeros((0, len(classes)))
    keep = y >= 0
    y, P = y[keep].astype(int), P[keep].astype(np.float64)
    pred = P.argmax(1)
    k = len(classes)
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
    sub = np.arange(len(y))
    if len(y) > max_auc_bases:  # AUROC on a fixed subsample of a huge test set
        sub = np.random.default_rng(0).choice(len(y), max_auc_bases, replace=False)
    per: Dict[str, Dict[str, Any]] = {}
    for j, c in enumerate(classes):
        yj = (y == j).astype(int)
        present = 0 < yj.sum() < len(yj)
        per[str(c)] = {"mcc": float(matthews_corrcoef(yj, (pred == j).astype(int))) if len(y) else None,
                       "f1": float(f1[j]), "precision": float(prec[j]), "recall": float(rec[j]),
                       "auroc": _safe(roc_auc_score, yj[sub], P[sub, j]) if present else None,
                       "support": int(sup[j])}
    present = [c for c in per if per[c]["support"] > 0]
    aucs = [per[c]["auroc"] for c in present if per[c]["auroc"] is not None]
    m = {"n": int(len(y)), "n_sequences": int(len(y_true)),
         "accuracy": float((pred == y).mean()) if len(y) else None,
         "mcc": float(matthews_corrcoef(y, pred)) if len(y) else None,
         "macro_mcc": float(np.mean([per[c]["mcc"] for c in present])) if present else None,
         "macro_f1": float(np.mean([per[c]["f1"] for c in present])) if present else None,
         "auroc": float(np.mean(aucs)) if aucs else None,
         "per_class": per}
    return m


# --------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plots(task: str, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
               cm_png: Path, roc_png: Path, title: str = "", threshold: float = 0.5) -> None:
    """Confusion matrix and ROC curve(s) as PNGs (matplotlib Agg)."""
    from sklearn.metrics import confusion_matrix

    plt = _plt()
    classes = list(classes)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    if task == "multilabel":
        pred = (proba >= 0.5).astype(int)
        yt = y_true.astype(int)
        mat = np.array([[((yt[:, j] == 1) & (pred[:, j] == 1)).sum(), ((yt[:, j] == 0) & (pred[:, j] == 1)).sum(),
                         ((yt[:, j] == 1) & (pred[:, j] == 0)).sum(), ((yt[:, j] == 0) & (pred[:, j] == 0)).sum()]
                        for j in range(len(classes))])
        xt, yl = ["TP", "FP", "FN", "TN"], classes
        ax.set_xlabel("outcome")
        ax.set_ylabel("label")
    else:
        pred = proba.argmax(1) if task in ("multiclass", "token") else (proba[:, 1] >= threshold).astype(int)
        mat = confusion_matrix(y_true, pred, labels=list(range(len(classes))))
        xt, yl = classes, classes
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    ax.imshow(mat, cmap="Blues")
    ax.set_xticks(range(len(xt)), xt, rotation=45, ha="right")
    ax.set_yticks(range(len(yl)), yl)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center",
                color="white" if v > mat.max() / 2 else "black")
    ax.set_title(f"confusion matrix {title}".strip())
    fig.tight_layout()
    fig.savefig(cm_png, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4))
    for name, fpr, tpr in _roc_curves(task, y_true, proba, classes):
        ax.plot(fpr, tpr, label=str(name))
    _roc_axes(ax, f"ROC {title}".strip())
    fig.tight_layout()
    fig.savefig(roc_png, dpi=110)
    plt.close(fig)


def _roc_curves(task: str, y_true, proba, classes) -> List[Tuple[str, np.ndarray, np.ndarray]]:
    from sklearn.metrics import roc_curve

    y_true, proba = np.asarray(y_true), np.asarray(proba)
    if task == "binary":
        curves = [(classes[1], y_true == 1, proba[:, 1])]
    elif task in ("multiclass", "token"):
        if task == "token" and len(classes) == 2:
            curves = [(classes[1], y_true == 1, proba[:, 1])]
        else:
            curves = [(c, y_true == j, proba[:, j]) for j, c in enumerate(classes)]
    else:
        curves = [(c, y_true[:, j] == 1, proba[:, j]) for j, c in enumerate(classes)]
    out = []
    for name, yt, p in curves:
        if 0 < yt.sum() < len(yt):
            fpr, tpr, _ = roc_curve(yt, p)
            if len(fpr) > 4000:  # thin the curve of a per-base test set
                keep = np.unique(np.linspace(0, len(fpr) - 1, 4000).astype(int))
                fpr, tpr = fpr[keep], tpr[keep]
            out.append((name, fpr, tpr))
    return out


def _roc_axes(ax, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")


def save_scatter(y_true: np.ndarray, pred: np.ndarray, png: Path, title: str = "") -> None:
    """Predicted against true values of a regression head (with the y = x line)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4))
    _scatter(ax, y_true, pred, title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _scatter(ax, y_true, pred, title: str) -> None:
    y = np.asarray(y_true, dtype=float).reshape(-1)
    f = np.asarray(pred, dtype=float).reshape(-1)
    ax.scatter(y, f, s=6, alpha=0.5)
    if len(y):
        lo, hi = float(min(y.min(), f.min())), float(max(y.max(), f.max()))
        ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=0.8)
    m = regression_metrics(y, f)
    r = "n/a" if m["pearson"] is None else f"{m['pearson']:.3f}"
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"{title} (Pearson {r})".strip())


def save_comparison(task: str, models: Mapping[str, Tuple[Any, Any]], classes: Sequence[str], png: Path,
                    title: str = "") -> None:
    """One figure comparing the fine-tuned model with its baselines on the same
    test split. ``models``: name -> (y_true, predictions) as each was scored
    (per-token arrays concatenated by the caller). Binary tasks: the ROC curves
    of all models on one axes; other classification tasks: one ROC panel per
    model; regression: one scatter panel per model."""
    from sklearn.metrics import auc as sk_auc

    plt = _plt()
    names = list(models)
    if task == "binary" or (task == "token" and len(classes) == 2):
        fig, ax = plt.subplots(figsize=(4.8, 4.3))
        for name in names:
            y, p = models[name]
            for _, fpr, tpr in _roc_curves(task, y, p, classes):
                auc = float(sk_auc(fpr, tpr))
                ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
        _roc_axes(ax, f"ROC {title}".strip())
    else:
        fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            y, p = models[name]
            if task == "regression":
                _scatter(ax, y, p, name)
            else:
                for cname, fpr, tpr in _roc_curves(task, y, p, classes):
                    ax.plot(fpr, tpr, label=str(cname))
                _roc_axes(ax, f"{name}")
        if title:
            fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


NOT_METRICS = ("n", "n_sequences", "seed", "time_s", "steps", "best_step", "epochs", "n_parameters", "l2_C",
               "n_train_bases")


def summarize_runs(runs: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Mean and sample standard deviation of each numeric top-level metric over
    runs (seeds): ``{"mean": {...}, "sd": {...}}`` (sd 0 for a single run)."""
    keys = [k for k, v in runs[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in NOT_METRICS]
    mean, sd = {}, {}
    for k in keys:
        vals = [r.get(k) for r in runs]
        if any(v is None for v in vals):
            continue
        a = np.asarray(vals, dtype=np.float64)
        mean[k] = float(a.mean())
        sd[k] = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    return {"mean": mean, "sd": sd}
