"""Fine-tuning a head on labeled DNA: ``finetune(cfg) -> metrics``.

Tasks (``cfg.task``):

* ``classification`` (default): binary, multiclass or multi-label, from one
  FASTA per class, a CSV/TSV (sequence,label) or a labeled BED + reference;
* ``regression``: a numeric label column (MSE, Pearson, Spearman);
* ``token``: per-base classes from a GFF3 / GenBank / BED feature table over
  ``--reference`` (e.g. CDS vs non-coding), windows of ``window`` bases.

Modes: full fine-tuning of encoder + head (default); ``freeze``: the encoder is
frozen and only the MLP head trains; ``probe``: a cross-validated logistic /
ridge regression on frozen pooled embeddings, folded into a linear head.

The recipe (every default below is chosen from the training-set size and
recorded in metrics.json under ``recipe``):

* split: test = a seeded stratified ``test_fraction`` (or ``--test``);
  validation = 10% of the rest but at least min(``min_val``, 25%) sequences,
  so early stopping and the decision threshold are not decided by a handful
  of sequences; token tasks split by genome position (the last 20% of the
  genome is the test set, the 10% before it validation) so no base is shared;
* length: epochs = 30·sqrt(1000 / n_train) clipped to [3, 30] (small sets
  need more passes, large sets fewer), at most 20,000 steps;
* schedule: linear warm-up over 6% of the steps, cosine decay to 5% of the
  peak (the schedule pretraining uses);
* validation about 25 times per run (at least once per epoch); early stopping
  on a smooth metric (AUROC for classification, the loss for regression and
  per-token tasks) after ``patience`` = 1/5 of the evaluations without
  improvement, never before a third of the steps; the best state is restored;
* reverse-complement augmentation and averaging on (DNA is double-stranded;
  ``rc_average=False`` turns both off for strand-specific data);
* binary tasks: the decision threshold maximising MCC on the validation split
  is used on the test set and saved with the head;
* ``seeds`` > 1: that many runs on the same split, mean ± sd, and the
  ensemble of their predictions; the run with the best validation score is
  saved.

``baselines``: a k-mer linear model and a CNNProm-style CNN trained on the
very same split (see :mod:`mambadna.components.baselines`), reported under
``baselines`` with the same metric keys, plus ``baselines.png``.

The output directory (written atomically) holds the model (``model.safetensors``
+ ``head.safetensors`` + ``config.json`` with a ``head`` section),
``metrics.json``, the plots and the test predictions.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mambadna.components.checkpoint import load_model, read_config
from mambadna.components.device import resolve_device
from mambadna.components.fit import EarlyStopping, Plan, batches, evaluate, fit, predict
from mambadna.components.metrics import (choose_threshold, compute_metrics, save_comparison, save_plots,
                                         save_scatter, summarize_runs)
from mambadna.components.schedule import warmup_cosine
from mambadna.errors import InputError, TrainingError
from mambadna.inference.pooling import normalize_pool
from mambadna.io.files import atomic_dir, jsonable, publish_mode
from mambadna.io.labeled import LabeledSet, load_labeled, stratified_split
from mambadna.model.heads import (HeadConfig, SequenceClassifier, linear_head_from_logistic, pooled_embeddings,
                                  save_classifier)
from mambadna.tokenizer import encode, reverse_complement

__all__ = ["FinetuneConfig", "finetune", "compute_metrics", "load_dataset", "make_plan", "validation_size"]

log = logging.getLogger("mambadna")

TASKS = ("classification", "regression", "token")
METRICS = {"classification": ("auto", "auroc", "auprc", "mcc", "accuracy", "loss"),
           "regression": ("auto", "loss", "mse", "pearson", "spearman", "r2"),
           "token": ("auto", "loss", "macro_mcc", "macro_f1", "mcc", "accuracy", "auroc")}
MAX_AUTO_STEPS = 20_000
EVALS_PER_RUN = 25


@dataclass
class FinetuneConfig:
    """Everything ``mambadna finetune`` needs; ``None`` means "chosen by the
    recipe from the data size" (see the module doc and :func:`make_plan`).

    model: pretrained model directory. out: output directory.
    task: 'classification' | 'regression' | 'token'.
    train: CSV/TSV (sequence,label) or labeled BED (+ reference); for
    ``token`` a GFF3 / GenBank / BED feature file. classes: list of (name,
    FASTA) pairs instead of ``train``. val / test: same formats as ``train``;
    missing ones are seeded splits. feature_types: token classes (GFF3 type /
    GenBank key / BED name; default CDS); window: token window in bases [1024].
    max_steps or epochs [recipe]. seeds: runs on the same split (mean ± sd,
    ensemble). freeze: train the head only. probe: logistic / ridge regression
    on frozen embeddings. pooling/center_width/layer: how per-token states
    become one vector. rc_average [on]: average forward and reverse-complement
    predictions; rc_augment [= rc_average]: random reverse complements in
    training. val_fraction [recipe: 10%, at least min(min_val, 25%)].
    eval_every / patience / min_steps [recipe]. metric: early-stopping metric
    ('auto': AUROC for classification, the loss otherwise). positive: binary
    positive class (default: the second class). baselines: also train the
    k-mer and CNN baselines on the same split; cnn_epochs: the CNN's epoch
    budget (CNNProm's 40, with early stopping).
    """

    model: str
    out: str
    train: Optional[str] = None
    classes: List[Tuple[str, str]] = field(default_factory=list)
    val: Optional[str] = None
    test: Optional[str] = None
    reference: Optional[str] = None
    label_column: Optional[str] = None
    task: str = "classification"
    feature_types: List[str] = field(default_factory=list)
    window: Optional[int] = None
    max_steps: Optional[int] = None
    epochs: Optional[float] = None
    seed: int = 0
    seeds: int = 1
    device: str = "auto"
    freeze: bool = False
    probe: bool = False
    pooling: str = "mean"
    center_width: int = 64
    layer: int = -1
    hidden: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    rc_average: Optional[bool] = None
    rc_augment: Optional[bool] = None
    batch_size: int = 32
    lr: float = 3e-4
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.06
    min_lr_ratio: float = 0.05
    val_fraction: Optional[float] = None
    min_val: int = 200
    test_fraction: float = 0.2
    eval_every: Optional[int] = None
    patience: Optional[int] = None
    min_steps: Optional[int] = None
    metric: str = "auto"
    positive: Optional[str] = None
    max_length: Optional[int] = None
    baselines: bool = False
    cnn_epochs: int = 40
    bf16: bool = True
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise InputError(None, f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if (self.train is None) == (not self.classes):
            raise InputError(None, "give either --train DATA or at least two --class NAME=FILE")
        if self.max_steps is not None and self.epochs is not None:
            raise InputError(None, "give --max-steps or --epochs, not both")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(None, f"--max-steps must be >= 1, got {self.max_steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise InputError(None, f"--epochs must be > 0, got {self.epochs}")
        if self.cnn_epochs < 1:
            raise InputError(None, f"--cnn-epochs must be >= 1, got {self.cnn_epochs}")
        if self.seeds < 1:
            raise InputError(None, f"--seeds must be >= 1, got {self.seeds}")
        self.pooling = normalize_pool(self.pooling, pooled_only=True)
        if self.freeze and self.probe:
            raise InputError(None, "--freeze and --probe are exclusive (the probe is always frozen)")
        if self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 1:
                raise InputError(None, f"{name} must be in (0, 1), got {v}")
        for name in ("eval_every", "patience"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(None, f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.metric not in METRICS[self.task]:
            raise InputError(None, f"--metric {self.metric!r} does not apply to --task {self.task} "
                                   f"(use {', '.join(METRICS[self.task])})")
        if self.task == "token":
            given = [opt for opt, v in (("--class", self.classes), ("--val", self.val), ("--test", self.test),
                                        ("--probe", self.probe), ("--positive", self.positive),
                                        ("--max-length", self.max_length)) if v]
            if given:
                raise InputError(None, f"{', '.join(given)} do(es) not apply to --task token (the split is by "
                                       f"genome position: --val-fraction / --test-fraction)")
            if self.window is not None and self.window < 8:
                raise InputError(None, f"--window must be >= 8, got {self.window}")
        else:
            if self.feature_types or self.window is not None:
                raise InputError(None, "--feature-type and --window apply to --task token only")
        if self.task == "regression" and self.positive is not None:
            raise InputError(None, "--positive applies to binary classification, not --task regression")
        if self.rc_average is None:
            self.rc_average = True
        if self.rc_augment is None:
            self.rc_augment = self.rc_average

    @property
    def mode(self) -> str:
        return "probe" if self.probe else ("freeze" if self.freeze else "finetune")


# --------------------------------------------------------------------------- the recipe
def validation_size(cfg: FinetuneConfig, n: int) -> int:
    """Sequences of ``n`` (train + validation pool) held out for validation:
    ``val_fraction`` of them when given, else 10% but at least
    min(``min_val``, 25%): a validation split of a few dozen sequences makes
    early stopping and the threshold a coin toss."""
    if cfg.val_fraction is not None:
        return max(1, int(round(cfg.val_fraction * n)))
    return max(1, int(round(0.1 * n)), min(cfg.min_val, n // 4))


def default_epochs(n_train: int) -> float:
    """30·sqrt(1000 / n_train) clipped to [3, 30]: 30 epochs up to 1,000
    training sequences, 10 at 9,000, 3 from 100,000 on."""
    return float(min(30.0, max(3.0, round(30.0 * math.sqrt(1000.0 / max(n_train, 1)), 1))))


def make_plan(cfg: FinetuneConfig, n_train: int, metric: str, batch_size: Optional[int] = None) -> Plan:
    """The training plan for ``n_train`` training sequences: what the user set,
    the size-aware default for everything else."""
    bs = batch_size or cfg.batch_size
    spe = max(1, math.ceil(n_train / bs))
    if cfg.max_steps is not None:
        total, epochs = cfg.max_steps, cfg.max_steps / spe
    else:
        epochs = cfg.epochs if cfg.epochs is not None else default_epochs(n_train)
        total = max(1, math.ceil(epochs * spe))
        if cfg.epochs is None:
            total = min(total, MAX_AUTO_STEPS)
    every = cfg.eval_every or max(1, min(spe, math.ceil(total / EVALS_PER_RUN)))
    n_evals = max(1, total // every)
    patience = cfg.patience or max(3, round(n_evals / 5))
    min_steps = cfg.min_steps if cfg.min_steps is not None else math.ceil(total / 3)
    return Plan(total=total, every=every, warmup=max(1, round(cfg.warmup_fraction * total)),
                min_steps=min_steps, patience=patience, batch_size=bs, metric=metric,
                rc_augment=bool(cfg.rc_augment), rc_average=bool(cfg.rc_average),
                min_lr_ratio=cfg.min_lr_ratio, steps_per_epoch=spe, epochs=round(total / spe, 3))


def _auto_metric(cfg: FinetuneConfig, task: str) -> str:
    """'auto': AUROC for classification (a ranking metric: smooth, and what a
    tuned threshold turns into MCC), the loss for regression and token tasks."""
    if cfg.metric != "auto":
        return cfg.metric
    return "auroc" if task in ("binary", "multiclass", "multilabel") else "loss"


# --------------------------------------------------------------------------- data
def _is_bed(path: str) -> bool:
    p = path.lower()
    return p.endswith(".bed") or p.endswith(".bed.gz")


def load_dataset(path: str, reference: Optional[str], label_column: Optional[str] = None,
                 genome=None, numeric: bool = False) -> LabeledSet:
    """A labeled set from a CSV/TSV table or a labeled BED (needs ``reference``)."""
    if _is_bed(path):
        return load_labeled(bed=path, reference=genome if genome is not None else reference,
                            label_column=label_column, numeric=numeric)
    return load_labeled(table=path, label_column=label_column, numeric=numeric)


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
    """Training targets: (n,) class index, (n, k) multi-hot float, or (n,) values."""
    if task == "regression":
        return ds.values.astype(np.float32)
    if task == "multilabel":
        return ds.multilabel.astype(np.float32)
    return ds.labels.astype(np.int64)


def _strata(ds: LabeledSet, task: str) -> np.ndarray:
    """What a split is stratified on: classes, or quintiles of a regression target."""
    if task == "regression":
        q = np.quantile(ds.values, [0.2, 0.4, 0.6, 0.8])
        return np.searchsorted(q, ds.values, side="right")
    return ds.multilabel if task == "multilabel" else ds.labels


def _tokenize(ds: LabeledSet, max_length: Optional[int]) -> List[np.ndarray]:
    out = []
    for s in ds.sequences:
        ids = encode(s)
        if max_length is not None and len(ids) > max_length:  # centre crop
            a = (len(ids) - max_length) // 2
            ids = ids[a:a + max_length]
        out.append(ids)
    return out


@dataclass
class _Data:
    task: str
    classes: List[str]
    names: Tuple[List[str], List[str], List[str]]  # train, val, test
    seqs: Tuple[list, list, list]
    y: Tuple[Any, Any, Any]
    src: str
    test_source: str
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> Tuple[int, int, int]:
        return tuple(len(s) for s in self.seqs)  # type: ignore[return-value]


def _split(cfg: FinetuneConfig, full: LabeledSet, task: str, src: str, genome, classes: List[str]):
    numeric = task == "regression"
    try:
        if cfg.test is not None:
            test = load_dataset(cfg.test, cfg.reference, cfg.label_column, genome, numeric)
            if not numeric:
                test = _align_classes(test, classes, cfg.test, task == "multilabel")
            rest = full
        else:
            tr_idx, te_idx = stratified_split(_strata(full, task), (1 - cfg.test_fraction, cfg.test_fraction),
                                              seed=cfg.seed)
            rest, test = full.subset(tr_idx), full.subset(te_idx)
        if cfg.val is not None:
            val = load_dataset(cfg.val, cfg.reference, cfg.label_column, genome, numeric)
            if not numeric:
                val = _align_classes(val, classes, cfg.val, task == "multilabel")
            train = rest
        else:
            n_val = validation_size(cfg, len(rest))
            if n_val >= len(rest):
                raise ValueError(f"no training data left after a validation split of {n_val}")
            f = n_val / len(rest)
            tr_idx, va_idx = stratified_split(_strata(rest, task), (1 - f, f), seed=cfg.seed + 1000)
            train, val = rest.subset(tr_idx), rest.subset(va_idx)
    except ValueError as e:
        raise InputError(src, f"cannot split {len(full)} sequences into train/validation/test: {e}") from None
    return train, val, test


def _load_sequences(cfg: FinetuneConfig, genome) -> _Data:
    numeric = cfg.task == "regression"
    if cfg.classes:
        names = [n for n, _ in cfg.classes]
        if len(set(names)) != len(names):
            raise InputError(None, f"duplicate --class names: {names}")
        full = load_labeled(class_fastas={n: p for n, p in cfg.classes}, numeric=numeric)
        src = ", ".join(p for _, p in cfg.classes)
    else:
        full = load_dataset(cfg.train, cfg.reference, cfg.label_column, genome, numeric)
        src = cfg.train
    classes = list(full.classes)
    if numeric:
        task = "regression"
    else:
        task = "multilabel" if full.multilabel is not None else ("binary" if len(classes) == 2 else "multiclass")
    if task == "binary" and cfg.positive is not None:
        if cfg.positive not in classes:
            raise InputError(src, f"--positive {cfg.positive!r} is not a class ({', '.join(classes)})")
        if classes[1] != cfg.positive:
            classes = [classes[1], classes[0]]
            full = _align_classes(full, classes, src, False)
    if task in ("binary", "multiclass"):
        counts = np.bincount(full.labels, minlength=len(classes))
        if (counts < 2).any():
            raise InputError(src, f"class {classes[int(np.argmin(counts))]!r} has {int(counts.min())} "
                                  f"sequence(s); each class needs at least 2")
    train, val, test = _split(cfg, full, task, src, genome, classes)
    tokens = tuple(_tokenize(d, cfg.max_length) for d in (train, val, test))
    test_source = cfg.test or f"held-out stratified {cfg.test_fraction:.0%} split (seed {cfg.seed})"
    return _Data(task, classes, (train.names, val.names, test.names), tokens,  # type: ignore[arg-type]
                 tuple(_targets(d, task) for d in (train, val, test)), src, test_source)  # type: ignore[arg-type]


def _load_tokens(cfg: FinetuneConfig, genome) -> _Data:
    """Per-base labels over the reference, cut into windows, split by position:
    train | validation | test in genome order."""
    from mambadna.io.features import load_token_labels, token_windows

    track = load_token_labels(cfg.train, genome if genome is not None else cfg.reference,
                              cfg.feature_types or None)
    window = cfg.window or 1024
    names, ids, labs = token_windows(track, window)
    n = len(names)
    n_test = max(1, int(round(cfg.test_fraction * n)))
    n_val = validation_size(cfg, n - n_test)
    n_tr = n - n_test - n_val
    if n_tr < 1:
        raise InputError(cfg.train, f"{n} windows of {window} bases are too few for a train/validation/test "
                                    f"split (use a smaller --window)")
    cuts = [(0, n_tr), (n_tr, n_tr + n_val), (n_tr + n_val, n)]
    part = lambda xs: tuple(xs[a:b] for a, b in cuts)  # noqa: E731
    return _Data("token", track.classes, part(names), part(ids), part(labs), cfg.train,  # type: ignore[arg-type]
                 f"the last {cfg.test_fraction:.0%} of the windows in genome order",
                 extra={"window": window, "feature_counts": track.counts,
                        "class_fraction": _class_fraction(labs, track.classes)})


def _class_fraction(labs: Sequence[np.ndarray], classes: Sequence[str]) -> Dict[str, float]:
    cnt = np.bincount(np.concatenate(labs), minlength=len(classes)).astype(float)
    return {c: round(float(v / max(cnt.sum(), 1)), 4) for c, v in zip(classes, cnt)}


# --------------------------------------------------------------------------- frozen-encoder paths
def _features(model: SequenceClassifier, seqs, cfg: FinetuneConfig, device, rc: bool) -> torch.Tensor:
    f = pooled_embeddings(model.encoder, [np.ascontiguousarray(reverse_complement(s)) if rc else s for s in seqs],
                          pooling=cfg.pooling, center_width=cfg.center_width, layer=cfg.layer,
                          batch_size=cfg.batch_size * 2, device=device)
    return torch.as_tensor(f, device=device)


def _head_predict(model: SequenceClassifier, f: torch.Tensor, f_rc: Optional[torch.Tensor]) -> np.ndarray:
    model.head.eval()
    with torch.no_grad():
        p = model.probabilities(model.head(f).float())
        if f_rc is not None:
            p = 0.5 * (p + model.probabilities(model.head(f_rc).float()))
    return p.cpu().numpy()


def _train_frozen(model: SequenceClassifier, cfg: FinetuneConfig, plan: Plan, data: _Data, seed: int, device):
    """Frozen encoder, sequence-level task: cache pooled features once, train
    the head on them. Returns (test predictions, stopper, steps)."""
    (seqs_tr, seqs_va, seqs_te), (y_tr, y_va, _) = data.seqs, data.y
    model.encoder.requires_grad_(False)
    model.encoder.eval()
    need_rc = (plan.rc_average or plan.rc_augment) and not model.rc_equivariant
    use_rc_eval = plan.rc_average and not model.rc_equivariant
    F_tr = _features(model, seqs_tr, cfg, device, False)
    F_tr_rc = _features(model, seqs_tr, cfg, device, True) if need_rc else None
    F_va = _features(model, seqs_va, cfg, device, False)
    F_va_rc = _features(model, seqs_va, cfg, device, True) if use_rc_eval else None
    Y_tr = torch.as_tensor(y_tr, device=device)
    opt = torch.optim.AdamW(model.head.parameters(), lr=cfg.head_lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(seed)
    it = batches(len(seqs_tr), plan.batch_size, rng)
    stopper = EarlyStopping(model.head, data.task, y_va, data.classes, plan.metric, plan.patience, plan.min_steps,
                            plan.total)
    step = 0
    while step < plan.total:
        model.head.train()
        idx = torch.as_tensor(next(it), device=device)
        x = F_tr[idx]
        if plan.rc_augment and F_tr_rc is not None:
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5, device=device)
            x = torch.where(flip[:, None], F_tr_rc[idx], x)
        for g in opt.param_groups:
            g["lr"] = cfg.head_lr * warmup_cosine(step, plan.total, plan.warmup, plan.min_lr_ratio)
        opt.zero_grad(set_to_none=True)
        loss = model.loss(model.head(x), Y_tr[idx])
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss at step {step}")
        loss.backward()
        opt.step()
        step += 1
        if step % plan.every == 0 or step == plan.total:
            if stopper.update(step, float(loss.detach()), _head_predict(model, F_va, F_va_rc)):
                break
    stopper.restore()
    F_te = _features(model, seqs_te, cfg, device, False)
    F_te_rc = _features(model, seqs_te, cfg, device, True) if use_rc_eval else None
    return _head_predict(model, F_te, F_te_rc), stopper, step


def _fit_probe(model: SequenceClassifier, cfg: FinetuneConfig, data: _Data, seed: int, device):
    """Cross-validated logistic (ridge for regression) regression on
    standardised frozen embeddings of the training split, folded into the
    linear head. Returns (test predictions, validation predictions, info)."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import StratifiedKFold

    (seqs_tr, seqs_va, seqs_te), (y_tr, _, _) = data.seqs, data.y
    task = data.task
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
        lr = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  max_iter=2000, scoring="neg_log_loss")
        with warnings.catch_warnings():  # sklearn 1.8+ announces API changes of LogisticRegressionCV
            warnings.simplefilter("ignore", FutureWarning)
            lr.fit(Xs, y)
        return lr

    info: Dict[str, Any] = {}
    if task == "regression":
        hc = model.head_cfg
        rr = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(Xs, (Y - hc.target_mean) / hc.target_std)
        coef, icpt = rr.coef_[None, :], np.atleast_1d(rr.intercept_)
        info = {"probe_alpha": float(rr.alpha_)}
    elif task == "multilabel":
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
        info = {"probe_C": Cs}
    else:
        lr = fit(Y)
        coef, icpt = lr.coef_, lr.intercept_
        info = {"probe_C": [float(c) for c in np.atleast_1d(lr.C_)][:1]}
        if task == "multiclass" and coef.shape[0] == 1:  # sklearn binary-shaped for 2 classes
            coef = np.concatenate([-coef / 2, coef / 2])
            icpt = np.concatenate([-icpt / 2, icpt / 2])
    linear_head_from_logistic(model, coef, icpt, mean, scale)
    info["probe_cv_folds"] = "stratified" if task != "regression" else "leave-one-out (RidgeCV)"
    pv = predict(model, seqs_va, cfg.batch_size * 2, device, cfg.rc_average, bf16=False)
    pt = predict(model, seqs_te, cfg.batch_size * 2, device, cfg.rc_average, bf16=False)
    return pt, pv, info


# --------------------------------------------------------------------------- one run
def _one_run(cfg: FinetuneConfig, data: _Data, head_cfg: HeadConfig, plan: Plan, seed: int, device,
             encoder=None) -> Dict[str, Any]:
    """Train one model (one seed). Returns the model (on CPU), its test and
    validation predictions, validation metrics, threshold and training info."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    enc = encoder if encoder is not None else load_model(cfg.model, "cpu")
    model = SequenceClassifier(enc, copy.deepcopy(head_cfg)).to(device)
    (seqs_tr, seqs_va, seqs_te), (y_tr, y_va, _) = data.seqs, data.y
    info: Dict[str, Any] = {}
    val_metrics = None
    if cfg.probe:
        test_pred, val_pred, info = _fit_probe(model, cfg, data, seed, device)
        val_metrics = evaluate(data.task, y_va, val_pred, data.classes)
        score_ = None
    else:
        if cfg.freeze and not head_cfg.per_token:
            test_pred, stopper, steps = _train_frozen(model, cfg, plan, data, seed, device)
        else:
            if cfg.freeze:  # token head on a frozen encoder: per-token features are too big to cache
                model.encoder.requires_grad_(False)
                groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr}]
            else:
                groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
                          {"params": list(model.head.parameters()), "lr": cfg.head_lr}]
            stopper, steps = fit(model, groups, plan, seqs_tr, y_tr, seqs_va, y_va, device, seed=seed,
                                 weight_decay=cfg.weight_decay, progress=cfg.progress, bf16=cfg.bf16)
            # test predictions in fp32: what the saved classifier gives when loaded again
            test_pred = predict(model, seqs_te, cfg.batch_size * 2, device, plan.rc_average, bf16=False)
        val_pred, val_metrics, score_ = stopper.best_pred, stopper.best_val, stopper.best
        info = stopper.info(steps)
    threshold = 0.5
    if data.task == "binary" and val_pred is not None:
        threshold, _ = choose_threshold(y_va, np.asarray(val_pred)[:, 1])
        model.head_cfg.threshold = threshold
    if score_ is None:
        from mambadna.components.fit import score as _score

        score_ = _score(val_metrics, plan.metric)
    return {"seed": seed, "model": model.cpu(), "test_pred": test_pred, "val_pred": val_pred,
            "val": _brief_val(val_metrics), "score": score_, "threshold": threshold, "info": info}


def _brief_val(vm: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return None if vm is None else {k: v for k, v in vm.items() if k != "per_class"}


def _test_metrics(data: _Data, pred, threshold: float) -> Dict[str, Any]:
    m = evaluate(data.task, data.y[2], pred, data.classes, threshold=threshold)
    m.pop("loss", None)
    return m


def _mean_pred(preds: List[Any]):
    if isinstance(preds[0], list):  # per token
        return [np.mean([p[i] for p in preds], axis=0) for i in range(len(preds[0]))]
    return np.mean(np.stack(preds), axis=0)


# --------------------------------------------------------------------------- main entry
def finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Fine-tune (or probe) a head and evaluate it; see the module doc.

    Returns the metrics dict also written to ``<out>/metrics.json``: test
    metrics at top level (classification: accuracy, mcc, auroc, auprc,
    sensitivity, specificity and the validation-chosen threshold for binary;
    regression: mse, rmse, mae, r2, pearson, spearman; token: per-base accuracy,
    mcc, macro_mcc, macro_f1, auroc and per_class), plus ``val``, ``task``,
    ``classes``, ``mode``, sizes, ``recipe``, steps, timing, and ``seeds`` /
    ``ensemble`` / ``baselines`` when asked for.
    """
    from mambadna.io.files import prepare_output

    t0 = time.time()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    inputs = [cfg.model, cfg.train, cfg.val, cfg.test, cfg.reference] + [p for _, p in cfg.classes]
    prepare_output(out, "dir", overwrite=cfg.overwrite, inputs=inputs, command="finetune")

    # model first: a bad model dir fails before any data work
    encoder = load_model(cfg.model, "cpu")
    prev = read_config(cfg.model)
    if "head" in prev:
        log.info("%s already holds a head; fine-tuning its encoder with a new head", cfg.model)

    genome = None
    if cfg.reference is not None:
        from mambadna.io.fasta import Genome

        genome = Genome(cfg.reference)
    data = _load_tokens(cfg, genome) if cfg.task == "token" else _load_sequences(cfg, genome)
    task, classes = data.task, data.classes
    n_tr, n_va, n_te = data.sizes
    metric = _auto_metric(cfg, task)
    plan = make_plan(cfg, n_tr, metric)
    log.info("finetune: task %s, classes %s, train %d, val %d, test %d, mode %s, device %s; %s steps "
             "(%.1f epochs), validation every %d, patience %d, RC %s", task, classes, n_tr, n_va, n_te, cfg.mode,
             device, plan.total, plan.epochs, plan.every, plan.patience,
             "augment+average" if plan.rc_augment and plan.rc_average else
             ("average" if plan.rc_average else ("augment" if plan.rc_augment else "off")))

    head_cfg = HeadConfig(classes=classes, task=task, pooling=cfg.pooling, center_width=cfg.center_width,
                          layer=cfg.layer, hidden=[] if cfg.probe else list(cfg.hidden),
                          dropout=0.0 if cfg.probe else cfg.dropout, rc_average=bool(cfg.rc_average))
    if task == "regression":
        y = data.y[0].astype(np.float64)
        head_cfg.target_mean, head_cfg.target_std = float(y.mean()), float(y.std() or 1.0)

    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    runs = [_one_run(cfg, data, head_cfg, plan, s, device, encoder if k == 0 else None)
            for k, s in enumerate(seeds)]
    for r in runs:
        r["test"] = _test_metrics(data, r["test_pred"], r["threshold"])
    best = max(runs, key=lambda r: r["score"])
    model = best["model"]

    metrics: Dict[str, Any] = dict(best["test"])
    metrics.update(task=task, classes=classes, mode=cfg.mode, positive=classes[1] if task == "binary" else None,
                   rc_average=bool(cfg.rc_average), rc_augment=bool(cfg.rc_augment), pooling=cfg.pooling,
                   seed=best["seed"], n_train=n_tr, n_val=n_va, n_test=n_te, test_source=data.test_source,
                   val=best["val"], recipe=dict(plan.to_dict(), val_size_rule=_val_rule(cfg)), **data.extra)
    if task == "binary":
        metrics["threshold_source"] = "maximum MCC on the validation split"
    if task == "token":
        metrics["n_test_bases"] = metrics["n"]
    metrics.update(best["info"])
    ensemble_pred = None
    if len(runs) > 1:
        metrics["seeds"] = dict(summarize_runs([r["test"] for r in runs]), n=len(runs), values=seeds,
                                saved=best["seed"],
                                runs=[{k: v for k, v in r["test"].items() if k != "per_class"} for r in runs])
        ensemble_pred = _mean_pred([r["test_pred"] for r in runs])
        ens_thr = 0.5
        if task == "binary":
            ens_thr, _ = choose_threshold(data.y[1], _mean_pred([r["val_pred"] for r in runs])[:, 1])
        metrics["ensemble"] = dict(_test_metrics(data, ensemble_pred, ens_thr), n_models=len(runs))
    log.info("test: %s", _brief(task, metrics))
    if "seeds" in metrics:
        log.info("over %d seeds: %s", len(runs), _brief_sd(task, metrics["seeds"]))

    baseline_res: Dict[str, Dict[str, Any]] = {}
    if cfg.baselines:
        from mambadna.components.baselines import run_baselines

        baseline_res = run_baselines(("kmer", "cnn"), head_cfg, plan,
                                     (data.seqs[0], data.y[0], data.seqs[1], data.y[1], data.seqs[2]),
                                     data.y[2], device, seeds, progress=cfg.progress, bf16=cfg.bf16,
                                     cnn_epochs=cfg.cnn_epochs)
        metrics["baselines"] = {k: dict(v["metrics"], n_test=n_te, n_train=n_tr, n_val=n_va)
                                for k, v in baseline_res.items()}
    metrics["time_s"] = round(time.time() - t0, 2)

    # ------------------------------------------------------------- outputs (atomic)
    with atomic_dir(out) as tmp:
        card = {k: metrics[k] for k in ("accuracy", "mcc", "auroc", "mse", "pearson", "spearman", "macro_mcc",
                                        "macro_f1") if isinstance(metrics.get(k), float)}
        save_classifier(model, tmp, extra={"finetune": jsonable(dataclasses.asdict(cfg)),
                                           "base_model": str(cfg.model), "metrics": card})
        (tmp / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
        _write_outputs(tmp, data, best, ensemble_pred, cfg, baseline_res)
        publish_mode(tmp, 0o755)
    return metrics


def _val_rule(cfg: FinetuneConfig) -> str:
    if cfg.val is not None:
        return f"given ({cfg.val})"
    if cfg.val_fraction is not None:
        return f"{cfg.val_fraction:g} of the training data"
    return f"10% of the training data, at least min({cfg.min_val}, 25%)"


def _write_outputs(tmp: Path, data: _Data, best: Dict[str, Any], ensemble_pred, cfg: FinetuneConfig,
                   baseline_res: Dict[str, Dict[str, Any]]) -> None:
    task, classes = data.task, data.classes
    y_te, pred = data.y[2], best["test_pred"]
    title = f"({cfg.mode}, test n={len(data.seqs[2])})"
    if task == "regression":
        save_scatter(y_te, pred, tmp / "scatter.png", title=f"{cfg.mode}, test n={len(y_te)}")
    elif task == "token":
        y_flat = np.concatenate(y_te)
        p_flat = np.concatenate(pred)
        save_plots("token", y_flat, p_flat, classes, tmp / "confusion_matrix.png", tmp / "roc.png",
                   title=f"(per base, {len(y_flat):,} bases)")
    else:
        save_plots(task, y_te, pred, classes, tmp / "confusion_matrix.png", tmp / "roc.png", title=title,
                   threshold=best["threshold"])
    if task == "token":
        _write_token_predictions(tmp / "test_predictions.bed", data.names[2], pred, classes)
    else:
        _write_predictions(tmp / "test_predictions.tsv", data.names[2], y_te, pred, classes, task,
                           best["model"].head_cfg, ensemble_pred)
    if baseline_res:
        models = {"mambadna": (y_te, pred)}
        models.update((k, (y_te, v["pred"])) for k, v in baseline_res.items())
        if task == "token":
            models = {k: (np.concatenate(y), np.concatenate(p)) for k, (y, p) in models.items()}
        save_comparison(task, models, classes, tmp / "baselines.png",
                        title=f"test n={len(data.seqs[2])}, same split")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


_KEYS = {"regression": ("mse", "pearson", "spearman"), "token": ("macro_mcc", "macro_f1", "accuracy", "auroc")}


def _brief(task: str, m: Dict[str, Any]) -> str:
    keys = _KEYS.get(task, ("accuracy", "mcc", "auroc", "auprc"))
    return ", ".join(f"{k} {_fmt(m.get(k))}" for k in keys)


def _brief_sd(task: str, s: Dict[str, Any]) -> str:
    keys = _KEYS.get(task, ("accuracy", "mcc", "auroc", "auprc"))
    return ", ".join(f"{k} {s['mean'][k]:.4f} ± {s['sd'][k]:.4f}" for k in keys if k in s["mean"])


def _write_predictions(path: Path, names: Sequence[str], y: np.ndarray, proba: np.ndarray,
                       classes: Sequence[str], task: str, head_cfg: HeadConfig, ensemble=None) -> None:
    from mambadna.model.heads import predicted_labels

    if task == "regression":
        cols = ["name", "label", "prediction"] + (["ensemble"] if ensemble is not None else [])
        with open(path, "w") as fh:
            fh.write("\t".join(cols) + "\n")
            for i, name in enumerate(names):
                row = [name, f"{y[i]:.6g}", f"{proba[i, 0]:.6g}"]
                if ensemble is not None:
                    row.append(f"{ensemble[i, 0]:.6g}")
                fh.write("\t".join(row) + "\n")
        return
    pred = predicted_labels(np.asarray(proba), head_cfg)
    cols = ["name", "label"] + [f"p_{c}" for c in classes] + ["prediction"]
    if ensemble is not None:
        cols += [f"ensemble_p_{c}" for c in classes]
    with open(path, "w") as fh:
        fh.write("\t".join(cols) + "\n")
        for i, name in enumerate(names):
            lab = ";".join(c for c, b in zip(classes, y[i]) if b) if task == "multilabel" else classes[int(y[i])]
            row = [name, lab] + [f"{v:.6g}" for v in proba[i]] + [pred[i]]
            if ensemble is not None:
                row += [f"{v:.6g}" for v in ensemble[i]]
            fh.write("\t".join(row) + "\n")


def _write_token_predictions(path: Path, names: Sequence[str], proba: Sequence[np.ndarray],
                             classes: Sequence[str]) -> None:
    """Predicted feature segments of the test windows as BED: runs of one
    non-background class, with the mean probability of that class as score."""
    with open(path, "w") as fh:
        fh.write("#contig\tstart\tend\tclass\tmean_probability\n")
        for name, p in zip(names, proba):
            contig, _, span = name.rpartition(":")
            start = int(span.split("-")[0])
            lab = p.argmax(1)
            edges = np.flatnonzero(np.diff(lab)) + 1
            for a, b in zip(np.r_[0, edges], np.r_[edges, len(lab)]):
                c = int(lab[a])
                if c == 0:
                    continue
                fh.write(f"{contig}\t{start + a}\t{start + b}\t{classes[c]}\t{float(p[a:b, c].mean()):.4f}\n")
