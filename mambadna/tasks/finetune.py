"""Fine-tuning a classifier on labeled DNA: ``finetune(cfg) -> metrics``.

Three modes:

* full fine-tuning of encoder + head (default);
* ``freeze``: the encoder is frozen, its pooled features are computed once
  and only the MLP head is trained;
* ``probe``: a scikit-learn ``LogisticRegressionCV`` (cross-validated L2
  strength) on standardised frozen pooled embeddings; the fitted model is
  folded into a linear head so the output directory is an ordinary
  classifier that ``mambadna classify`` loads.

Data: ``train`` (CSV/TSV of sequence,label or a labeled BED + reference) or
``classes`` (one FASTA per class). Validation: ``val`` or a seeded stratified
split of the training data; test: ``test`` or a seeded stratified held-out
split (``test_fraction``). Early stopping on the validation metric; the best
state is restored before the final test evaluation.

The output directory (written atomically) holds the classifier
(``model.safetensors`` + ``head.safetensors`` + ``config.json`` with a
``head`` section), ``metrics.json``, ``confusion_matrix.png``, ``roc.png`` and
``test_predictions.tsv``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.components.checkpoint import load_model, read_config
from mambadna.components.device import resolve_device
from mambadna.components.schedule import warmup_cosine
from mambadna.errors import InputError, TrainingError
from mambadna.model.heads import (HeadConfig, SequenceClassifier, linear_head_from_logistic, logits_to_proba,
                    pooled_embeddings, predict_proba, save_classifier)
from mambadna.tasks.classify import publish_mode
from mambadna.io.files import atomic_dir
from mambadna.io.labeled import LabeledSet, load_labeled, stratified_split
from mambadna.inference.pooling import normalize_pool
from mambadna.tokenizer import encode, reverse_complement

log = logging.getLogger("mambadna")

PathLike = Union[str, os.PathLike]


@dataclass
class FinetuneConfig:
    """Everything ``mambadna finetune`` needs.

    model: pretrained model directory. out: output directory.
    train: CSV/TSV (sequence,label) or BED (+ reference); classes: list of
    (name, FASTA) pairs instead of ``train``. val / test: same formats as
    ``train`` (tables or BEDs); missing ones are seeded stratified splits.
    max_steps or epochs (default 3 epochs). freeze: train the head only.
    probe: logistic regression on frozen embeddings. pooling/center_width/
    layer: how per-token states become one vector. rc_average: average forward
    and reverse-complement predictions at inference; rc_augment: random
    reverse complements during training (default: = rc_average).
    metric: validation metric for early stopping ('auto': MCC, AUROC for multilabel);
    ties go to the lower validation loss.
    patience: evaluations without improvement before stopping.
    positive: binary positive class name (default: the second class).
    """

    model: str
    out: str
    train: Optional[str] = None
    classes: List[Tuple[str, str]] = field(default_factory=list)
    val: Optional[str] = None
    test: Optional[str] = None
    reference: Optional[str] = None
    label_column: Optional[str] = None
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    seed: int = 0
    device: str = "auto"
    freeze: bool = False
    probe: bool = False
    pooling: str = "mean"
    center_width: int = 64
    layer: int = -1
    hidden: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    rc_average: bool = False
    rc_augment: Optional[bool] = None
    batch_size: int = 32
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    eval_every: Optional[int] = None
    patience: int = 5
    metric: str = "auto"
    positive: Optional[str] = None
    max_length: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        if (self.train is None) == (not self.classes):
            raise InputError(None, "give either --train DATA or at least two --class NAME=FILE")
        if self.max_steps is not None and self.epochs is not None:
            raise InputError(None, "give --max-steps or --epochs, not both")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(None, f"--max-steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise InputError(None, f"--epochs must be > 0, got {self.epochs}")
        self.pooling = normalize_pool(self.pooling, pooled_only=True)
        if self.freeze and self.probe:
            raise InputError(None, "--freeze and --probe are exclusive (the probe is always frozen)")
        if self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise InputError(None, f"{name} must be in (0, 1), got {v}")
        if self.metric not in ("auto", "auroc", "auprc", "mcc", "accuracy", "loss"):
            raise InputError(None, f"unknown metric {self.metric!r}")
        if self.rc_augment is None:
            self.rc_augment = self.rc_average

    @property
    def mode(self) -> str:
        return "probe" if self.probe else ("freeze" if self.freeze else "finetune")


# --------------------------------------------------------------------------- data
def _is_bed(path: str) -> bool:
    p = path.lower()
    return p.endswith(".bed") or p.endswith(".bed.gz")


def load_dataset(path: str, reference: Optional[str], label_column: Optional[str] = None,
                 genome=None) -> LabeledSet:
    """A labeled set from a CSV/TSV table or a labeled BED (needs ``reference``)."""
    if _is_bed(path):
        return load_labeled(bed=path, reference=genome if genome is not None else reference,
                            label_column=label_column)
    return load_labeled(table=path, label_column=label_column)


def _align_classes(ds: LabeledSet, classes: List[str], src: str, multilabel: bool) -> LabeledSet:
    """Re-index ``ds`` onto the training ``classes`` by name."""
    pos = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in ds.classes if c not in pos]
    if unknown:
        raise InputError(src, f"class(es) {', '.join(map(repr, unknown))} not in the training "
                              f"classes ({', '.join(classes)})")
    remap = np.asarray([pos[c] for c in ds.classes], dtype=np.int64)
    labels = remap[ds.labels]
    ml = None
    if multilabel:
        ml = np.zeros((len(ds), len(classes)), dtype=bool)
        if ds.multilabel is not None:
            for j, c in enumerate(ds.classes):
                ml[:, pos[c]] = ds.multilabel[:, j]
        else:
            ml[np.arange(len(ds)), labels] = True
    return LabeledSet(ds.names, ds.sequences, labels, list(classes), ml)


def _targets(ds: LabeledSet, task: str) -> np.ndarray:
    """Training targets: (n,) class index or (n, k) multi-hot float."""
    if task == "multilabel":
        return ds.multilabel.astype(np.float32)
    return ds.labels.astype(np.int64)


def _tokenize(ds: LabeledSet, max_length: Optional[int]) -> List[np.ndarray]:
    out = []
    for s in ds.sequences:
        ids = encode(s)
        if max_length is not None and len(ids) > max_length:  # centre crop
            a = (len(ids) - max_length) // 2
            ids = ids[a:a + max_length]
        out.append(ids)
    return out


# --------------------------------------------------------------------------- metrics
def compute_metrics(task: str, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                    threshold: float = 0.5) -> Dict[str, Any]:
    """Accuracy, MCC, AUROC, AUPRC (+ sensitivity/specificity for binary).

    y_true: (n,) class indices, or (n, k) 0/1 for multilabel; proba
    (n, n_classes). Multiclass AUROC/AUPRC are one-vs-rest macro averages;
    multilabel accuracy is the per-label mean, MCC/AUROC/AUPRC label macro
    averages. Undefined values (a class absent) are None.
    """
    from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix,
                                 matthews_corrcoef, roc_auc_score)

    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    m: Dict[str, Any] = {"n": int(len(y_true))}

    def safe(fn, *a, **k):
        try:
            v = float(fn(*a, **k))
            return v if math.isfinite(v) else None
        except ValueError:
            return None

    if task == "binary":
        p = proba[:, 1]
        pred = (p >= threshold).astype(int)
        tn, fp, fn, tp = confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
        m.update(accuracy=float(accuracy_score(y_true, pred)),
                 mcc=float(matthews_corrcoef(y_true, pred)),
                 auroc=safe(roc_auc_score, y_true, p),
                 auprc=safe(average_precision_score, y_true, p),
                 sensitivity=float(tp / (tp + fn)) if tp + fn else None,
                 specificity=float(tn / (tn + fp)) if tn + fp else None,
                 threshold=threshold)
    elif task == "multiclass":
        pred = proba.argmax(1)
        onehot = np.eye(len(classes))[y_true]
        present = onehot.sum(0) > 0
        m.update(accuracy=float(accuracy_score(y_true, pred)),
                 mcc=float(matthews_corrcoef(y_true, pred)),
                 auroc=safe(roc_auc_score, onehot[:, present], proba[:, present], average="macro"),
                 auprc=safe(average_precision_score, onehot[:, present], proba[:, present], average="macro"))
    else:
        pred = (proba >= threshold).astype(int)
        yt = y_true.astype(int)
        mccs = [matthews_corrcoef(yt[:, j], pred[:, j]) for j in range(yt.shape[1])]
        ok = [j for j in range(yt.shape[1]) if 0 < yt[:, j].sum() < len(yt)]
        m.update(accuracy=float((pred == yt).mean()),
                 subset_accuracy=float((pred == yt).all(1).mean()),
                 mcc=float(np.mean(mccs)),
                 auroc=safe(roc_auc_score, yt[:, ok], proba[:, ok], average="macro") if ok else None,
                 auprc=safe(average_precision_score, yt[:, ok], proba[:, ok], average="macro") if ok else None)
    return m


def _auto_metric(cfg: "FinetuneConfig", task: str) -> str:
    """'auto': MCC (the thresholded metric reported) for binary/multiclass,
    macro AUROC for multilabel."""
    if cfg.metric != "auto":
        return cfg.metric
    return "auroc" if task == "multilabel" else "mcc"


def _score(metrics: Dict[str, Any], metric: str, loss: float) -> Tuple[float, float]:
    """Higher is better: (metric, -loss); ties on the metric (e.g. AUROC 1.0)
    go to the lower validation loss. Falls back to MCC when undefined."""
    if metric == "loss":
        return (-loss, -loss)
    v = metrics.get(metric)
    if v is None:
        v = metrics.get("mcc")
    return (-loss if v is None else round(float(v), 6), -loss)


def save_plots(task: str, y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str],
               cm_png: Path, roc_png: Path, title: str = "") -> None:
    """Confusion matrix and ROC curve(s) as PNGs (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix, roc_curve

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
        pred = proba.argmax(1) if task == "multiclass" else (proba[:, 1] >= 0.5).astype(int)
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
    if task == "binary":
        curves = [(classes[1], np.asarray(y_true) == 1, proba[:, 1])]
    elif task == "multiclass":
        curves = [(c, np.asarray(y_true) == j, proba[:, j]) for j, c in enumerate(classes)]
    else:
        curves = [(c, y_true[:, j] == 1, proba[:, j]) for j, c in enumerate(classes)]
    for name, yt, p in curves:
        if 0 < yt.sum() < len(yt):
            fpr, tpr, _ = roc_curve(yt, p)
            ax.plot(fpr, tpr, label=str(name))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC {title}".strip())
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(roc_png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- training helpers
def _batches(n: int, batch_size: int, rng: np.random.Generator):
    """Endless shuffled batches of indices (reshuffled every epoch)."""
    while True:
        perm = rng.permutation(n)
        for k in range(0, n, batch_size):
            yield perm[k:k + batch_size]


def _group_by_length(seqs: Sequence[np.ndarray], idx: np.ndarray):
    groups: Dict[int, List[int]] = {}
    for i in idx:
        groups.setdefault(len(seqs[i]), []).append(int(i))
    return list(groups.values())


def _progress(total: int, enabled: bool, desc: str, unit: str = "step"):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit=unit, leave=False, dynamic_ncols=True)


def _head_proba_from_features(model: SequenceClassifier, f: torch.Tensor, f_rc: Optional[torch.Tensor]) -> np.ndarray:
    model.head.eval()
    with torch.no_grad():
        p = logits_to_proba(model.head(f).float(), model.head_cfg.task)
        if f_rc is not None:
            p = 0.5 * (p + logits_to_proba(model.head(f_rc).float(), model.head_cfg.task))
    return p.cpu().numpy()


def _val_loss(model: SequenceClassifier, proba: np.ndarray, y: np.ndarray) -> float:
    eps = 1e-7
    p = np.clip(proba, eps, 1 - eps)
    task = model.head_cfg.task
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


class _EarlyStopping:
    """Validation bookkeeping shared by the fine-tune and head-only loops: score
    each evaluation, keep the best state of ``module``, count evaluations
    without improvement against ``patience``."""

    def __init__(self, model: SequenceClassifier, module: torch.nn.Module, task: str, y_va: np.ndarray,
                 metric: str, patience: int):
        self.model, self.module, self.task, self.y_va = model, module, task, y_va
        self.metric, self.patience = metric, patience
        self.best: Tuple[float, float] = (-math.inf, -math.inf)
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.best_step, self.bad, self.best_val = 0, 0, None
        self.history: List[Dict[str, Any]] = []

    def update(self, step: int, train_loss: float, proba: np.ndarray) -> bool:
        """Record one evaluation; True when training should stop."""
        vm = compute_metrics(self.task, self.y_va, proba, self.model.head_cfg.classes)
        vloss = _val_loss(self.model, proba, self.y_va)
        vm["loss"] = vloss
        score = _score(vm, self.metric, vloss)
        self.history.append({"step": step, "train_loss": train_loss, "val_loss": vloss,
                             f"val_{self.metric}": vm.get(self.metric)})
        if score > self.best:
            self.best, self.best_step, self.bad, self.best_val = score, step, 0, vm
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
            return False
        self.bad += 1
        if self.bad >= self.patience:
            log.info("early stopping at step %d (best %s %.4f at step %d)", step, self.metric, self.best[0],
                     self.best_step)
            return True
        return False

    def restore(self) -> None:
        """Load the best state back into ``module``."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def info(self, steps: int) -> Dict[str, Any]:
        return {"steps": steps, "best_step": self.best_step, "val_metric": self.metric, "history": self.history}


# --------------------------------------------------------------------------- main entry
def finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Fine-tune (or probe) a classifier and evaluate it; see the module doc.

    Returns the metrics dict also written to ``<out>/metrics.json``: test
    metrics at top level (accuracy, mcc, auroc, auprc, sensitivity and
    specificity for binary), plus ``val`` (best validation metrics), ``task``,
    ``classes``, ``mode``, sizes, steps and timing.
    """

    t0 = time.time()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    device = resolve_device(cfg.device)
    out = Path(cfg.out)

    # model first: a bad model dir fails before any data work
    encoder = load_model(cfg.model, "cpu")
    prev = read_config(cfg.model)
    if "head" in prev:
        log.info("%s already holds a classifier head; fine-tuning its encoder with a new head", cfg.model)

    genome = None
    if cfg.reference is not None:
        from mambadna.io.fasta import Genome

        genome = Genome(cfg.reference)

    # ------------------------------------------------------------- data
    if cfg.classes:
        names = [n for n, _ in cfg.classes]
        if len(set(names)) != len(names):
            raise InputError(None, f"duplicate --class names: {names}")
        full = load_labeled(class_fastas={n: p for n, p in cfg.classes})
        src = ", ".join(p for _, p in cfg.classes)
    else:
        full = load_dataset(cfg.train, cfg.reference, cfg.label_column, genome)
        src = cfg.train
    classes = list(full.classes)
    task = "multilabel" if full.multilabel is not None else ("binary" if len(classes) == 2 else "multiclass")
    if task == "binary" and cfg.positive is not None:
        if cfg.positive not in classes:
            raise InputError(src, f"--positive {cfg.positive!r} is not a class ({', '.join(classes)})")
        if classes[1] != cfg.positive:
            classes = [classes[1], classes[0]]
            full = _align_classes(full, classes, src, False)
    counts = np.bincount(full.labels, minlength=len(classes))
    if task != "multilabel" and (counts < 2).any():
        raise InputError(src, f"class {classes[int(np.argmin(counts))]!r} has {int(counts.min())} "
                              f"sequence(s); each class needs at least 2")

    strat = full.multilabel if task == "multilabel" else full.labels
    try:
        if cfg.test is not None:
            test = _align_classes(load_dataset(cfg.test, cfg.reference, cfg.label_column, genome),
                                  classes, cfg.test, task == "multilabel")
            rest = full
        else:
            tr_idx, te_idx = stratified_split(strat, (1 - cfg.test_fraction, cfg.test_fraction), seed=cfg.seed)
            rest, test = full.subset(tr_idx), full.subset(te_idx)
        if cfg.val is not None:
            val = _align_classes(load_dataset(cfg.val, cfg.reference, cfg.label_column, genome),
                                 classes, cfg.val, task == "multilabel")
            train = rest
        elif cfg.probe:
            train, val = rest, None  # the probe cross-validates on the training data
        else:
            strat_r = rest.multilabel if task == "multilabel" else rest.labels
            tr_idx, va_idx = stratified_split(strat_r, (1 - cfg.val_fraction, cfg.val_fraction),
                                              seed=cfg.seed + 1000)
            train, val = rest.subset(tr_idx), rest.subset(va_idx)
    except ValueError as e:
        raise InputError(src, f"cannot split {len(full)} sequences into train/validation/test: {e}") from None
    log.info("finetune: task %s, classes %s, train %d, val %d, test %d, mode %s, device %s",
             task, classes, len(train), 0 if val is None else len(val), len(test), cfg.mode, device)

    seqs_tr = _tokenize(train, cfg.max_length)
    seqs_va = _tokenize(val, cfg.max_length) if val is not None else None
    seqs_te = _tokenize(test, cfg.max_length)
    y_tr, y_te = _targets(train, task), _targets(test, task)
    y_va = _targets(val, task) if val is not None else None

    head_cfg = HeadConfig(classes=classes, task=task, pooling=cfg.pooling, center_width=cfg.center_width,
                          layer=cfg.layer, hidden=[] if cfg.probe else list(cfg.hidden),
                          dropout=0.0 if cfg.probe else cfg.dropout, rc_average=cfg.rc_average)
    model = SequenceClassifier(encoder, head_cfg).to(device)
    info: Dict[str, Any] = {}
    if cfg.probe:
        test_proba, info = _fit_probe(model, cfg, seqs_tr, y_tr, seqs_te, device)
        val_metrics = None
    elif cfg.freeze:
        test_proba, val_metrics, info = _train_frozen(model, cfg, seqs_tr, y_tr, seqs_va, y_va, seqs_te, device)
    else:
        test_proba, val_metrics, info = _train_full(model, cfg, seqs_tr, y_tr, seqs_va, y_va, seqs_te, device)

    metrics = compute_metrics(task, y_te, test_proba, classes)
    metrics.update(task=task, classes=classes, mode=cfg.mode, positive=classes[1] if task == "binary" else None,
                   rc_average=cfg.rc_average, pooling=cfg.pooling, seed=cfg.seed,
                   n_train=len(train), n_val=0 if val is None else len(val), n_test=len(test),
                   test_source=cfg.test or f"held-out stratified {cfg.test_fraction:.0%} split (seed {cfg.seed})",
                   val=val_metrics, time_s=round(time.time() - t0, 2), **info)
    log.info("test: accuracy %.4f, MCC %.4f, AUROC %s, AUPRC %s", metrics["accuracy"], metrics["mcc"],
             _fmt(metrics.get("auroc")), _fmt(metrics.get("auprc")))

    # ------------------------------------------------------------- outputs (atomic)
    model = model.cpu()
    with atomic_dir(out) as tmp:
        save_classifier(model, tmp, extra={"finetune": _jsonable(dataclasses.asdict(cfg)),
                                           "base_model": str(cfg.model)})
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_plots(task, y_te, test_proba, classes, tmp / "confusion_matrix.png", tmp / "roc.png",
                   title=f"({cfg.mode}, test n={len(test)})")
        _write_predictions(tmp / "test_predictions.tsv", test, y_te, test_proba, classes, task)
        publish_mode(tmp, 0o755)
    return metrics


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


def _write_predictions(path: Path, ds: LabeledSet, y: np.ndarray, proba: np.ndarray,
                       classes: Sequence[str], task: str) -> None:
    with open(path, "w") as fh:
        fh.write("\t".join(["name", "label"] + [f"p_{c}" for c in classes]) + "\n")
        for i, name in enumerate(ds.names):
            lab = ";".join(c for c, b in zip(classes, y[i]) if b) if task == "multilabel" else classes[int(y[i])]
            fh.write("\t".join([name, lab] + [f"{v:.6g}" for v in proba[i]]) + "\n")


def _eval_interval(cfg: FinetuneConfig, total: int, steps_per_epoch: int) -> int:
    if cfg.eval_every:
        return max(1, cfg.eval_every)
    return max(1, min(steps_per_epoch, math.ceil(total / 10)))


def _total_steps(cfg: FinetuneConfig, n: int) -> Tuple[int, int]:
    spe = max(1, math.ceil(n / cfg.batch_size))
    if cfg.max_steps is not None:
        return cfg.max_steps, spe
    return max(1, math.ceil((cfg.epochs if cfg.epochs is not None else 3.0) * spe)), spe


def _maybe_rc(ids: np.ndarray, rng: np.random.Generator, on: bool) -> np.ndarray:
    if on and rng.random() < 0.5:
        return np.ascontiguousarray(reverse_complement(ids))
    return ids


def _train_full(model: SequenceClassifier, cfg: FinetuneConfig, seqs_tr, y_tr, seqs_va, y_va, seqs_te, device):
    """Fine-tune encoder + head. Returns (test proba, best val metrics, info)."""
    task = model.head_cfg.task
    total, spe = _total_steps(cfg, len(seqs_tr))
    every = _eval_interval(cfg, total, spe)
    warmup = int(cfg.warmup_fraction * total)
    metric = _auto_metric(cfg, task)
    opt = torch.optim.AdamW([
        {"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
        {"params": list(model.head.parameters()), "lr": cfg.head_lr},
    ], weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in opt.param_groups]
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(len(seqs_tr), cfg.batch_size, rng)
    stopper = _EarlyStopping(model, model, task, y_va, metric, cfg.patience)
    bar = _progress(total, cfg.progress, "finetune")
    step = 0
    try:
        while step < total:
            model.train()
            idx = next(batches)
            f = warmup_cosine(step, total, max(warmup, 1), 0.1)
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * f
            opt.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for grp in _group_by_length(seqs_tr, idx):
                ids = torch.as_tensor(np.stack([_maybe_rc(seqs_tr[i], rng, cfg.rc_augment) for i in grp])
                                      .astype(np.int64), device=device)
                tgt = torch.as_tensor(y_tr[grp], device=device)
                loss = model.loss(model(ids), tgt) * (len(grp) / len(idx))
                loss.backward()
                loss_sum += float(loss.detach())
            if not math.isfinite(loss_sum):
                raise TrainingError(f"non-finite training loss at step {step}")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            if step % every == 0 or step == total:
                proba = predict_proba(model, seqs_va, cfg.batch_size * 2, device, cfg.rc_average)
                if stopper.update(step, loss_sum, proba):
                    break
    finally:
        bar.close()
    stopper.restore()
    test_proba = predict_proba(model, seqs_te, cfg.batch_size * 2, device, cfg.rc_average)
    return test_proba, stopper.best_val, stopper.info(step)


def _features(model: SequenceClassifier, seqs, cfg: FinetuneConfig, device, rc: bool) -> torch.Tensor:
    f = pooled_embeddings(model.encoder, [np.ascontiguousarray(reverse_complement(s)) if rc else s for s in seqs],
                          pooling=cfg.pooling, center_width=cfg.center_width, layer=cfg.layer,
                          batch_size=cfg.batch_size * 2, device=device)
    return torch.as_tensor(f, device=device)


def _train_frozen(model: SequenceClassifier, cfg: FinetuneConfig, seqs_tr, y_tr, seqs_va, y_va, seqs_te, device):
    """Frozen encoder: cache pooled features once, train the head on them."""
    task = model.head_cfg.task
    model.encoder.requires_grad_(False)
    model.encoder.eval()
    need_rc = (cfg.rc_average or cfg.rc_augment) and not model.rc_equivariant
    F_tr = _features(model, seqs_tr, cfg, device, False)
    F_tr_rc = _features(model, seqs_tr, cfg, device, True) if need_rc else None
    use_rc_eval = cfg.rc_average and not model.rc_equivariant
    F_va = _features(model, seqs_va, cfg, device, False)
    F_va_rc = _features(model, seqs_va, cfg, device, True) if use_rc_eval else None
    Y_tr = torch.as_tensor(y_tr, device=device)
    total, spe = _total_steps(cfg, len(seqs_tr))
    every = _eval_interval(cfg, total, spe)
    warmup = int(cfg.warmup_fraction * total)
    metric = _auto_metric(cfg, task)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    batches = _batches(len(seqs_tr), cfg.batch_size, rng)
    stopper = _EarlyStopping(model, model.head, task, y_va, metric, cfg.patience)
    step = 0
    bar = _progress(total, cfg.progress, "head")
    try:
        while step < total:
            model.head.train()
            idx = torch.as_tensor(next(batches), device=device)
            x = F_tr[idx]
            if cfg.rc_augment and F_tr_rc is not None:
                flip = torch.as_tensor(rng.random(len(idx)) < 0.5, device=device)
                x = torch.where(flip[:, None], F_tr_rc[idx], x)
            for g in opt.param_groups:
                g["lr"] = cfg.head_lr * warmup_cosine(step, total, max(warmup, 1), 0.1)
            opt.zero_grad(set_to_none=True)
            loss = model.loss(model.head(x), Y_tr[idx])
            loss.backward()
            opt.step()
            step += 1
            bar.update(1)
            if step % every == 0 or step == total:
                proba = _head_proba_from_features(model, F_va, F_va_rc)
                if stopper.update(step, float(loss.detach()), proba):
                    break
    finally:
        bar.close()
    stopper.restore()
    F_te = _features(model, seqs_te, cfg, device, False)
    F_te_rc = _features(model, seqs_te, cfg, device, True) if use_rc_eval else None
    test_proba = _head_proba_from_features(model, F_te, F_te_rc)
    return test_proba, stopper.best_val, stopper.info(step)


def _fit_probe(model: SequenceClassifier, cfg: FinetuneConfig, seqs_tr, y_tr, seqs_te, device):
    """LogisticRegressionCV on standardised frozen embeddings, folded into the
    linear head. Returns (test proba, info)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    task = model.head_cfg.task
    model.encoder.eval()
    use_rc = cfg.rc_average and not model.rc_equivariant
    X = _features(model, seqs_tr, cfg, device, False).cpu().numpy().astype(np.float64)
    Y = np.asarray(y_tr)
    if use_rc:  # RC copies as augmentation; inference averages x and RC(x)
        X = np.concatenate([X, _features(model, seqs_tr, cfg, device, True).cpu().numpy()])
        Y = np.concatenate([Y, Y])
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-8] = 1.0
    Xs = (X - mean) / scale

    def fit(y):
        n_min = int(np.bincount(y.astype(int)).min())
        folds = max(2, min(5, n_min))
        lr = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(folds, shuffle=True, random_state=cfg.seed),
                                  max_iter=2000, scoring="neg_log_loss")
        with warnings.catch_warnings():  # sklearn 1.8+ announces API changes of LogisticRegressionCV
            warnings.simplefilter("ignore", FutureWarning)
            lr.fit(Xs, y)
        return lr

    if task == "multilabel":
        coefs, icpts, Cs = [], [], []
        for j in range(Y.shape[1]):
            yj = Y[:, j].astype(int)
            if yj.min() == yj.max():
                raise InputError(None, f"label {model.head_cfg.classes[j]!r} is constant in the training data")
            lr = fit(yj)
            coefs.append(lr.coef_[0])
            icpts.append(lr.intercept_[0])
            Cs.append(float(lr.C_[0]))
        coef, icpt = np.stack(coefs), np.asarray(icpts)
    else:
        lr = fit(Y)
        coef, icpt = lr.coef_, lr.intercept_
        Cs = [float(c) for c in np.atleast_1d(lr.C_)][:1]
        if task == "multiclass" and coef.shape[0] == 1:  # sklearn binary-shaped for 2 classes
            coef = np.concatenate([-coef / 2, coef / 2])
            icpt = np.concatenate([-icpt / 2, icpt / 2])
    linear_head_from_logistic(model, coef, icpt, mean, scale)
    test_proba = predict_proba(model, seqs_te, cfg.batch_size * 2, device, cfg.rc_average)
    return test_proba, {"probe_C": Cs, "probe_cv_folds": "stratified"}
