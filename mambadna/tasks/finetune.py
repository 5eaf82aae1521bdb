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
  improvement, never before a third of the steps; the best state is restored,
  chosen among the evaluations from max(warm-up, 10% of the steps) on (a
  state from the warm-up wins on a small validation split by chance);
* weight averaging: evaluation (and so the state kept) uses a moving average
  of the weights with decay ``min(ema, (1 + t) / (10 + t))`` at step t, about
  the last 10% of the steps so far (``ema`` = 0.999 caps it at ~1,000 steps):
  one seed's result depends less on where its last steps landed;
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

Binary tasks: the positive class (the one sensitivity, the ROC curve, the
threshold and a classifier's ``P(...)`` scores refer to; the second entry of
``classes``) is ``positive`` when given, else the first ``--class`` named,
else, for a CSV/TSV/BED label column, the conventional one: a label that
reads as positive (1, true, yes, pos, positive, case, ...) against one that
does not, or one that does not read as negative (0, false, no, neg, control,
...), else the second of the sorted labels. ``metrics.json`` records it
(``positive`` and ``positive_rule``).

The output directory (written atomically) holds the model (``model.safetensors``
+ ``head.safetensors`` + ``config.json`` with a ``head`` section),
``metrics.json``, the plots and the test predictions.

Faults: while a run trains, ``<out>/checkpoints/`` holds what it needs to
continue (see :class:`_Checkpoints`): the options and fingerprints of the data
and the base model, every finished seed, and the seed in progress after its
latest checkpointed step (model + head, optimizer, RNG, batch position and
early stopping; safetensors + JSON, no pickle). ``resume`` continues from
there, bit-identical to an uninterrupted run on CPU; SIGINT / SIGTERM stop at
the next step boundary with a checkpoint (exit 130 / 143). The finished
outputs replace ``out`` as a whole, checkpoints included.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mambadna.components.checkpoint import load_model, read_config
from mambadna.components.device import resolve_device
from mambadna.components.fit import (EarlyStopping, LoopState, Plan, StepCheckpoint, WeightAverage, batches,
                                     evaluate, fit, predict, train_loop)
from mambadna.components.metrics import (choose_threshold, compute_metrics, save_comparison, save_plots,
                                         save_scatter, summarize_runs)
from mambadna.components.resume import (StopRequest, arrays_to_tensors, load_trainer_state, save_trainer_state,
                                        tensors_to_arrays)
from mambadna.errors import CheckpointError, InputError, Interrupted, TrainingError
from mambadna.inference.pooling import normalize_pool
from mambadna.io.files import atomic_dir, atomic_path, jsonable, publish_mode
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
DEFAULT_EMA = 0.999


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
    eval_every / patience / min_steps [recipe]. ema: largest per-step decay of
    the weight average used for validation and kept [0.999; 0 = off]. metric: early-stopping metric
    ('auto': AUROC for classification, the loss otherwise). positive: the
    positive class of a binary task [with ``classes``: the first one named;
    with a label column: the conventional positive (1 over 0, true / yes /
    pos / case over the rest; else the second of the sorted labels)], recorded
    in metrics.json. baselines: also train the k-mer and CNN baselines on the
    same split; cnn_epochs: the CNN's epoch budget (CNNProm's 40, with early
    stopping). resume: continue the run whose checkpoints are in
    ``out/checkpoints`` (same options and data, else a CheckpointError naming
    what differs). save_every: steps between checkpoints of the seed in
    progress [at every validation]. overwrite: replace an ``out`` that is not
    an earlier finetune output, or start afresh over an unfinished run's
    checkpoints.
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
    ema: Optional[float] = None
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
    resume: bool = False
    save_every: Optional[int] = None

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
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            raise InputError(None, f"--ema must be in [0, 1), got {self.ema}")
        self.pooling = normalize_pool(self.pooling, pooled_only=True)
        if self.freeze and self.probe:
            raise InputError(None, "--freeze and --probe are exclusive (the probe is always frozen)")
        if self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 1:
                raise InputError(None, f"{name} must be in (0, 1), got {v}")
        for name in ("eval_every", "patience", "save_every"):
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
        if self.resume and self.overwrite:
            raise InputError(None, "--resume and --overwrite are exclusive (continue the run, or start afresh)")
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
    warmup = max(1, round(cfg.warmup_fraction * total))
    return Plan(total=total, every=every, warmup=warmup, select_from=max(warmup, total // 10),
                min_steps=min_steps, patience=patience, batch_size=bs, metric=metric,
                rc_augment=bool(cfg.rc_augment), rc_average=bool(cfg.rc_average),
                min_lr_ratio=cfg.min_lr_ratio, steps_per_epoch=spe, epochs=round(total / spe, 3),
                ema=DEFAULT_EMA if cfg.ema is None else float(cfg.ema))


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


POSITIVE_LABELS = ("true", "t", "yes", "y", "pos", "positive", "case", "+")
NEGATIVE_LABELS = ("false", "f", "no", "n", "neg", "negative", "control", "-")


def positive_class(cfg: FinetuneConfig, classes: Sequence[str], src: str) -> Tuple[str, str]:
    """(the positive class of a binary task, the rule that chose it): ``--positive``;
    else the first ``--class`` named; else the conventional positive label of
    a label column: the larger of two numbers (1 over 0), a word that reads
    as positive (true, yes, pos, case, ...) against one that does not, the
    word that does not read as negative (false, no, neg, control, ...), else
    the second of the sorted labels."""
    if cfg.positive is not None:
        if cfg.positive not in classes:
            raise InputError(src, f"--positive {cfg.positive!r} is not a class ({', '.join(classes)})")
        return cfg.positive, "--positive"
    if cfg.classes:
        return cfg.classes[0][0], "the first --class named"
    try:
        nums = [float(c) for c in classes]
    except ValueError:
        nums = None
    if nums is not None:
        big = classes[int(np.argmax(nums))]
        return big, "the larger number of the two labels"
    low = [c.strip().lower() for c in classes]
    pos = [c for c, l in zip(classes, low) if l in POSITIVE_LABELS]
    if len(pos) == 1:
        return pos[0], "the label that reads as positive"
    neg = [c for c, l in zip(classes, low) if l in NEGATIVE_LABELS]
    if len(neg) == 1:
        other = classes[1 - list(classes).index(neg[0])]
        return other, f"the label other than the negative-reading {neg[0]!r}"
    return classes[1], "the second of the sorted labels (--positive chooses another)"


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
    if cfg.positive is not None and task != "binary":
        raise InputError(src, f"--positive applies to a binary task; this one is {task} with {len(classes)} "
                              f"classes ({', '.join(classes)})")
    extra: Dict[str, Any] = {}
    if task == "binary":
        positive, rule = positive_class(cfg, classes, src)
        if classes[1] != positive:  # binary classes are [negative, positive]
            classes = [classes[1], classes[0]]
            full = _align_classes(full, classes, src, False)
        extra["positive_rule"] = rule
    if task in ("binary", "multiclass"):
        counts = np.bincount(full.labels, minlength=len(classes))
        if (counts < 2).any():
            raise InputError(src, f"class {classes[int(np.argmin(counts))]!r} has {int(counts.min())} "
                                  f"sequence(s); each class needs at least 2")
    train, val, test = _split(cfg, full, task, src, genome, classes)
    tokens = tuple(_tokenize(d, cfg.max_length) for d in (train, val, test))
    test_source = cfg.test or f"held-out stratified {cfg.test_fraction:.0%} split (seed {cfg.seed})"
    return _Data(task, classes, (train.names, val.names, test.names), tokens,  # type: ignore[arg-type]
                 tuple(_targets(d, task) for d in (train, val, test)), src, test_source,  # type: ignore[arg-type]
                 extra=extra)


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


def _train_frozen(model: SequenceClassifier, cfg: FinetuneConfig, plan: Plan, data: _Data, seed: int, device,
                  checkpoint: Optional[StepCheckpoint] = None):
    """Frozen encoder, sequence-level task: cache pooled features once, train
    the head on them (resumable like :func:`fit`: ``checkpoint``). Returns
    (test predictions, stopper, steps)."""
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
                            plan.total, plan.select_from)
    ema = WeightAverage(model.head, plan.ema) if plan.ema > 0 else None

    def step_fn() -> float:
        model.head.train()
        idx = torch.as_tensor(next(it), device=device)
        x = F_tr[idx]
        if plan.rc_augment and F_tr_rc is not None:
            flip = torch.as_tensor(rng.random(len(idx)) < 0.5, device=device)
            x = torch.where(flip[:, None], F_tr_rc[idx], x)
        loss = model.loss(model.head(x), Y_tr[idx])
        loss.backward()
        return float(loss.detach())

    step = train_loop(plan, opt, step_fn, lambda: _head_predict(model, F_va, F_va_rc),
                      LoopState(model.head, opt, rng, it, stopper, ema), checkpoint)
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
             encoder=None, checkpoint: Optional[StepCheckpoint] = None) -> Dict[str, Any]:
    """Train one model (one seed), resumable through ``checkpoint``. Returns
    the model (on CPU), its test and validation predictions, validation
    metrics, threshold and training info."""
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
            test_pred, stopper, steps = _train_frozen(model, cfg, plan, data, seed, device, checkpoint)
        else:
            if cfg.freeze:  # token head on a frozen encoder: per-token features are too big to cache
                model.encoder.requires_grad_(False)
                groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr}]
            else:
                groups = [{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
                          {"params": list(model.head.parameters()), "lr": cfg.head_lr}]
            stopper, steps = fit(model, groups, plan, seqs_tr, y_tr, seqs_va, y_va, device, seed=seed,
                                 weight_decay=cfg.weight_decay, progress=cfg.progress, bf16=cfg.bf16,
                                 checkpoint=checkpoint)
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


# --------------------------------------------------------------------------- checkpoints
CHECKPOINTS = "checkpoints"  # subfolder of --out holding an unfinished run (gone once the outputs are written)
RUN_JSON = "run.json"
RUN_RESULT = "result.json"
RUN_PREDICTIONS = "predictions.safetensors"
RUN_WEIGHTS = "classifier.safetensors"
# options that may change on --resume: they do not change what is computed. Input paths may change
# too (files moved): the data and the base model are compared by content (fingerprints) instead.
_RESUMABLE = {"out", "resume", "overwrite", "progress", "device", "save_every", "baselines", "cnn_epochs", "model",
              "train", "classes", "val", "test", "reference"}
_STEP_DIR = re.compile(r"^seed-(-?\d+)-step-(\d+)$")


def _sha256_arrays(h, arrays) -> None:
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")


def _data_fingerprint(data: _Data) -> str:
    """sha256 of what training sees: task, classes (in order: binary is [negative,
    positive]) and every split's names, token ids and targets."""
    h = hashlib.sha256(json.dumps([data.task, list(data.classes)]).encode())
    for names, seqs, y in zip(data.names, data.seqs, data.y):
        h.update(json.dumps(list(names)).encode())
        _sha256_arrays(h, seqs)
        _sha256_arrays(h, y if isinstance(y, (list, tuple)) else [y])
    return h.hexdigest()


def _model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's tensors (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _run_identity(cfg: FinetuneConfig, data: _Data, encoder, plan: Plan, seeds: List[int]) -> Dict[str, Any]:
    """What --resume compares: the options that shape the run, and fingerprints
    of the data split and of the base model's weights."""
    from mambadna import __version__

    opts = jsonable(dataclasses.asdict(cfg))
    opts["class_names"] = [n for n, _ in cfg.classes]
    return {"command": "finetune", "mambadna_version": __version__,
            "options": {k: v for k, v in opts.items() if k not in _RESUMABLE},
            "data": _data_fingerprint(data), "model": _model_fingerprint(encoder), "seeds": seeds,
            "sizes": list(data.sizes), "classes": list(data.classes), "plan": plan.to_dict()}


class _Checkpoints:
    """The checkpoints of a run in progress, in ``<out>/checkpoints/``:

    * ``run.json``: the options and the fingerprints of the data split and of
      the base model: what ``--resume`` checks, one line naming what differs;
    * ``seed-<s>/``: a finished run of seed ``s``: ``result.json`` (validation
      record, score, threshold, training info), ``predictions.safetensors``
      (test and validation predictions) and, while it is the best run so far,
      ``classifier.safetensors`` (encoder + head weights);
    * ``seed-<s>-step-<n>/``: the run of seed ``s`` in progress after step
      ``n`` (``trainer_state.safetensors`` + ``.json``: model and head,
      optimizer, RNG, batch position, early stopping); only the latest is kept.

    Every folder is written under a temporary name and renamed (a kill leaves
    the previous one whole). The folder goes when the finished outputs
    replace --out. No pickle anywhere."""

    def __init__(self, out: Path, cfg: FinetuneConfig, identity: Dict[str, Any]):
        self.out, self.cfg, self.identity = Path(out), cfg, identity
        self.dir = self.out / CHECKPOINTS
        self.stop = StopRequest()
        self.n_seeds = len(identity["seeds"])
        self.created_out = False

    # -- the run folder
    def open(self, stop: StopRequest) -> None:
        """Fresh run: refuse another run's checkpoints (unless --overwrite), then
        record this run. --resume: check the record (same options, data, model)."""
        self.stop = stop
        run_json = self.dir / RUN_JSON
        if self.cfg.resume and run_json.is_file():
            self._check(run_json)
            self._clear_leftovers()
            log.info("resuming from %s (%s)", self.dir, self._progress_note())
            self._update_detail()
            return
        if self.cfg.resume:
            log.warning("--resume: no checkpoint in %s; starting from the beginning", self.dir)
        if self.dir.exists():
            if not (self.cfg.overwrite or self.cfg.resume):
                raise InputError(self.out, f"holds the checkpoints of an unfinished finetune run ({self.dir}); "
                                           f"continue it with --resume, start afresh with --overwrite (deletes "
                                           f"them), or choose another --out")
            shutil.rmtree(self.dir)
        self.created_out = not self.out.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        publish_mode(self.dir, 0o755)
        with atomic_path(run_json) as tmp:
            tmp.write_text(json.dumps(self.identity, indent=1) + "\n")
            publish_mode(tmp)
        self._update_detail()

    def _check(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            old = saved["options"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(path, f"corrupt run record ({e}); start afresh with --overwrite") from None
        now = self.identity["options"]
        diff = [f"{k} (checkpoint {old[k]!r}, now {now[k]!r})" for k in sorted(set(old) & set(now))
                if k not in _RESUMABLE and old[k] != now[k]]
        if diff:
            raise CheckpointError(path, "was written by another configuration: " + "; ".join(diff[:4])
                                  + "; resume with the same options, or start afresh with --overwrite")
        for key, what in (("data", "training data (the sequences, labels or split differ)"),
                          ("model", f"base model (the weights of --model {self.cfg.model} differ)")):
            if saved.get(key) != self.identity[key]:
                raise CheckpointError(path, f"was written for other {what}; resume with the same inputs, or "
                                            f"start afresh with --overwrite")

    def _clear_leftovers(self) -> None:
        """Temporary folders of writes a kill interrupted (we hold the output's lock)."""
        for p in self.dir.iterdir():
            if p.name.startswith(".") and p.name.endswith((".tmp", ".old")):
                (shutil.rmtree if p.is_dir() else os.unlink)(p)

    def _progress_note(self) -> str:
        done = [s for s in self.identity["seeds"] if (self.dir / f"seed-{s}" / RUN_RESULT).is_file()]
        steps = self._steps()
        note = f"{len(done)} of {self.n_seeds} seed(s) finished"
        if steps:
            s, n = _STEP_DIR.match(steps[-1].name).groups()  # type: ignore[union-attr]
            note += f", seed {s} at step {int(n)}"
        return note

    def _update_detail(self, what: str = "") -> None:
        self.stop.detail = (f"{what}the checkpoints in {self.dir} are kept ({self._progress_note()}); continue "
                            f"with the same command plus --resume")

    def discard_if_unused(self) -> None:
        """Remove the folder when nothing but the run record was written."""
        if self.dir.is_dir() and all(p.name == RUN_JSON for p in self.dir.iterdir()):
            shutil.rmtree(self.dir, ignore_errors=True)
            if self.created_out:
                with contextlib.suppress(OSError):
                    self.out.rmdir()

    # -- finished runs
    def load_run(self, seed: int) -> Optional[Dict[str, Any]]:
        """A finished run of ``seed`` (model not loaded), or None."""
        from mambadna.io.weights import load_state_dict

        d = self.dir / f"seed-{seed}"
        if not (d / RUN_RESULT).is_file():
            return None
        try:
            meta = json.loads((d / RUN_RESULT).read_text())
            t = load_state_dict(d / RUN_PREDICTIONS)
            r = {"seed": seed, "model": None, "val": meta["val"], "score": tuple(float(x) for x in meta["score"]),
                 "threshold": float(meta["threshold"]), "info": meta["info"],
                 "test_pred": tensors_to_arrays("test_pred", t, meta["test_pred"]),
                 "val_pred": tensors_to_arrays("val_pred", t, meta["val_pred"])}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(d, f"corrupt finished run ({e}); start afresh with --overwrite") from None
        log.info("seed %d: finished earlier (%s)", seed, d)
        return r

    def load_run_model(self, r: Dict[str, Any], head_cfg: HeadConfig) -> SequenceClassifier:
        """The classifier of a finished run (its weights, its threshold)."""
        from mambadna.components.checkpoint import check_state_dict
        from mambadna.io.weights import load_state_dict

        path = self.dir / f"seed-{r['seed']}" / RUN_WEIGHTS
        if not path.is_file():
            raise CheckpointError(path, "missing: the best finished run has no weights; start afresh with "
                                        "--overwrite")
        model = SequenceClassifier(load_model(self.cfg.model, "cpu"), copy.deepcopy(head_cfg))
        state = load_state_dict(path)
        check_state_dict(state, model.state_dict(), path, against="the run's configuration")
        model.load_state_dict(state, strict=True)
        model.head_cfg.threshold = r["threshold"]
        return model

    def save_run(self, r: Dict[str, Any], is_best: bool) -> None:
        """Record a finished run (its weights when it is the best so far), then
        drop its step checkpoints and the weights of runs it beat."""
        from safetensors.torch import save_file

        target = self.dir / f"seed-{r['seed']}"
        t1, n1 = arrays_to_tensors("test_pred", r["test_pred"])
        t2, n2 = arrays_to_tensors("val_pred", r["val_pred"])
        meta = {"seed": r["seed"], "val": jsonable(r["val"]), "score": list(r["score"]),
                "threshold": r["threshold"], "info": jsonable(r["info"]), "test_pred": n1, "val_pred": n2}

        def fill(tmp: Path) -> None:
            save_file(dict(t1, **t2), str(tmp / RUN_PREDICTIONS))
            if is_best:
                state = {k: v.detach().contiguous().cpu() for k, v in r["model"].state_dict().items()}
                save_file(state, str(tmp / RUN_WEIGHTS), metadata={"format": "pt", "library": "mambadna"})
            (tmp / RUN_RESULT).write_text(json.dumps(meta, indent=1) + "\n")  # last: marks the run finished

        with self.stop.deferred():
            self._write(target, fill)
            for p in self._steps(r["seed"]):
                shutil.rmtree(p, ignore_errors=True)
            if is_best:
                for s in self.identity["seeds"]:
                    if s != r["seed"]:
                        with contextlib.suppress(FileNotFoundError):
                            (self.dir / f"seed-{s}" / RUN_WEIGHTS).unlink()
            last = r["seed"] == self.identity["seeds"][-1]
            self._update_detail("all seeds are finished; " if last else "")
        self.stop.check()

    # -- the run in progress
    def _steps(self, seed: Optional[int] = None) -> List[Path]:
        found = []
        for p in self.dir.iterdir() if self.dir.is_dir() else []:
            m = _STEP_DIR.match(p.name)
            if m and (seed is None or int(m.group(1)) == seed) and (p / "trainer_state.json").is_file():
                found.append((int(m.group(1)), int(m.group(2)), p))
        return [p for _, _, p in sorted(found)]

    def step_checkpoint(self, seed: int, k: int, n: int, plan: Plan) -> "_StepCheckpoint":
        return _StepCheckpoint(self, seed, k, n, self.cfg.save_every or plan.every)

    def save_step(self, seed: int, step: int, state) -> Path:
        target = self.dir / f"seed-{seed}-step-{step:07d}"
        tensors, meta = state()
        meta = dict(meta, seed=seed)
        with self.stop.deferred():
            self._write(target, lambda tmp: save_trainer_state(tmp, tensors, meta))
            for old in self._steps(seed):
                if old != target:
                    shutil.rmtree(old, ignore_errors=True)
            self._update_detail()
        return target

    def _write(self, target: Path, fill) -> None:
        """Write a checkpoint folder atomically; a full disk or an unwritable
        folder leaves the earlier checkpoints as they were."""
        try:
            with atomic_dir(target, replace=True) as tmp:
                fill(tmp)
                for f in tmp.iterdir():
                    publish_mode(f)
                publish_mode(tmp, 0o755)
        except OSError as e:
            raise TrainingError(f"cannot write checkpoint {target} ({e.strerror or e}); the earlier checkpoints "
                                f"in {self.dir} are intact; free space or fix the folder, then continue with "
                                f"--resume") from None


class _StepCheckpoint(StepCheckpoint):
    """One seed's loop: continue from its latest checkpoint, save every
    ``every`` steps, and on SIGINT/SIGTERM save at the step boundary and stop."""

    def __init__(self, owner: _Checkpoints, seed: int, k: int, n: int, every: int):
        self.owner, self.seed, self.k, self.n, self.every = owner, seed, k, n, every
        self.last: Optional[Path] = None

    def start(self):
        found = self.owner._steps(self.seed)
        if not found:
            return None
        ck = found[-1]
        tensors, meta = load_trainer_state(ck)
        if meta.get("seed") != self.seed:
            raise CheckpointError(ck, f"holds seed {meta.get('seed')!r}, expected {self.seed}")
        log.info("seed %d: resuming at step %s from %s", self.seed, meta.get("step"), ck)
        self.last = ck
        return tensors, meta, ck

    def loop(self):
        return self.owner.stop.deferred()

    def step_done(self, step: int, total: int, state) -> None:
        stop = self.owner.stop
        if (step % self.every == 0 and step < total) or stop.signum is not None:
            if self.last is None or self.last.name != f"seed-{self.seed}-step-{step:07d}":
                self.last = self.owner.save_step(self.seed, step, state)
        if stop.signum is not None:
            run = f" (seed {self.seed}, run {self.k + 1} of {self.n})" if self.n > 1 else ""
            raise Interrupted(stop.signum, f"stopped after step {step} of {total}{run}; checkpoint {self.last}; "
                                           f"continue with the same command plus --resume")


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
    _clear_leftovers(out)

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
             "(%.1f epochs), validation every %d, patience %d, RC %s, weight average %s", task, classes, n_tr, n_va,
             n_te, cfg.mode, device, plan.total, plan.epochs, plan.every, plan.patience,
             "augment+average" if plan.rc_augment and plan.rc_average else
             ("average" if plan.rc_average else ("augment" if plan.rc_augment else "off")),
             f"decay <= {plan.ema:g}" if plan.ema > 0 else "off")

    head_cfg = HeadConfig(classes=classes, task=task, pooling=cfg.pooling, center_width=cfg.center_width,
                          layer=cfg.layer, hidden=[] if cfg.probe else list(cfg.hidden),
                          dropout=0.0 if cfg.probe else cfg.dropout, rc_average=bool(cfg.rc_average))
    if task == "regression":
        y = data.y[0].astype(np.float64)
        head_cfg.target_mean, head_cfg.target_std = float(y.mean()), float(y.std() or 1.0)

    seeds = [cfg.seed + k for k in range(cfg.seeds)]
    if task == "binary":
        log.info("positive class %r (%s)", classes[1], data.extra.get("positive_rule"))
    ck = _Checkpoints(out, cfg, _run_identity(cfg, data, encoder, plan, seeds))
    with StopRequest() as stop:
        ck.open(stop)
        try:
            runs, best = _all_runs(cfg, data, head_cfg, plan, seeds, device, encoder, ck)
        except InputError:
            ck.discard_if_unused()  # a late input error leaves no output behind either
            raise
        return _finish(cfg, data, plan, runs, best, seeds, device, head_cfg, ck, t0)


def _all_runs(cfg: FinetuneConfig, data: _Data, head_cfg: HeadConfig, plan: Plan, seeds: List[int], device,
              encoder, ck: "_Checkpoints") -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Every seed's run: a finished one from the checkpoints, the others trained
    (the one in progress from its latest checkpoint). Only the best run so far
    keeps its model (the first of equal scores, as ``max`` picks)."""
    runs: List[Dict[str, Any]] = []
    best: Optional[Dict[str, Any]] = None
    for k, s in enumerate(seeds):
        r = ck.load_run(s)
        fresh = r is None
        if r is None:
            r = _one_run(cfg, data, head_cfg, plan, s, device, encoder if k == 0 else None,
                         checkpoint=ck.step_checkpoint(s, k, len(seeds), plan))
        is_best = best is None or r["score"] > best["score"]
        if fresh:
            ck.save_run(r, is_best)
        if is_best:
            if best is not None:
                best["model"] = None
            best = r
        else:
            r["model"] = None
        runs.append(r)
    assert best is not None
    if best["model"] is None:
        best["model"] = ck.load_run_model(best, head_cfg)
    return runs, best


def _finish(cfg: FinetuneConfig, data: _Data, plan: Plan, runs: List[Dict[str, Any]], best: Dict[str, Any],
            seeds: List[int], device, head_cfg: HeadConfig, ck: "_Checkpoints", t0: float) -> Dict[str, Any]:
    """Metrics, ensemble, baselines and the outputs of the finished runs."""
    task, classes = data.task, data.classes
    n_tr, n_va, n_te = data.sizes
    out = Path(cfg.out)
    for r in runs:
        r["test"] = _test_metrics(data, r["test_pred"], r["threshold"])
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
    # they replace --out as a whole (prepare_output vouched for it; the checkpoints go with it)
    with ck.stop.deferred(), atomic_dir(out, replace=True) as tmp:
        card = {k: metrics[k] for k in ("accuracy", "mcc", "auroc", "mse", "pearson", "spearman", "macro_mcc",
                                        "macro_f1") if isinstance(metrics.get(k), float)}
        save_classifier(model, tmp, extra={"finetune": jsonable(dataclasses.asdict(cfg)),
                                           "base_model": str(cfg.model), "metrics": card})
        (tmp / "metrics.json").write_text(json.dumps(jsonable(metrics), indent=2) + "\n")
        _write_outputs(tmp, data, best, ensemble_pred, cfg, baseline_res)
        publish_mode(tmp, 0o755)
    return metrics


def _clear_leftovers(out: Path) -> None:
    """Temporary folders beside ``out`` that a killed run left (``.<name>.<8 chars>.tmp``
    / ``.old`` of :func:`atomic_dir`): this run holds the output's lock, so they are no one else's.
    A kill between the two renames of the final write leaves ``out`` moved aside into
    ``.old/x``: it is put back first (its checkpoints let --resume finish the run)."""
    pat = re.compile(r"^\.%s\.[a-z0-9_]{8}\.(tmp|old)$" % re.escape(out.name))
    if not out.parent.is_dir():
        return
    found = [p for p in out.parent.iterdir() if pat.match(p.name) and p.is_dir() and not p.is_symlink()]
    if not out.exists() and not out.is_symlink():
        moved = sorted((p for p in found if p.name.endswith(".old") and (p / "x").is_dir()),
                       key=lambda p: p.stat().st_mtime)
        if moved:
            os.replace(moved[-1] / "x", out)
            log.warning("put %s back from %s (a run was killed while replacing it)", out, moved[-1])
    for p in found:
        shutil.rmtree(p, ignore_errors=True)


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
        what = f"test n={len(data.seqs[2])}"
        if task == "token":
            models = {k: (np.concatenate(y), np.concatenate(p)) for k, (y, p) in models.items()}
            what = f"per base, {len(models['mambadna'][0]):,} test bases in {len(data.seqs[2])} windows"
        save_comparison(task, models, classes, tmp / "baselines.png", title=f"{what}, same split")


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
