"""The supervised training loop shared by fine-tuning and the CNN baselines.

``fit(model, groups, plan, train, val, ...)`` trains any :class:`Predictor`
(a :class:`~mambadna.model.heads.SequenceClassifier` or a baseline CNN) with
AdamW, the warm-up + cosine schedule of pretraining, optional random
reverse complements, and early stopping on a validation metric; the best
state is restored at the end. Everything about *how long* and *how often*
comes in a :class:`Plan` (fine-tuning derives it from the data size).

A loop can be checkpointed at its step boundaries and continued bit for bit
(on CPU): :class:`LoopState` is everything it depends on (the trained
module, the optimizer, the numpy generator of batches and flips, the batch
position, torch's RNG for dropout, early stopping); a ``checkpoint`` object
given to :func:`fit` hands back a saved state at the start and is told of
every finished step (see :class:`StepCheckpoint`).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.components.metrics import choose_threshold, compute_metrics, token_metrics
from mambadna.components.resume import (arrays_to_tensors, generator_state, load_optimizer_state, optimizer_state,
                                        rng_state, set_generator_state, set_rng_state, tensors_to_arrays)
from mambadna.components.schedule import warmup_cosine
from mambadna.errors import TrainingError
from mambadna.model.heads import Predictor, predict_proba, predict_tokens
from mambadna.tokenizer import reverse_complement

log = logging.getLogger("mambadna")

LOWER_IS_BETTER = ("loss", "mse", "rmse", "mae")


@dataclass
class Plan:
    """How one training run goes: ``total`` optimizer steps of ``batch_size``
    sequences, warm-up over ``warmup`` steps then cosine decay to
    ``min_lr_ratio`` of the peak; validation every ``every`` steps; stop after
    ``patience`` validations without improvement of ``metric``, but never
    before ``min_steps``. ``ema`` > 0: validation (and so the state kept)
    uses an exponential moving average of the weights with that decay per
    step (warmed up as ``min(ema, (1 + t) / (10 + t))``: about the last 10% of
    the steps so far); 0: the weights as they are. Evaluations before step
    ``select_from`` are recorded but never kept (a state from the warm-up wins
    on a small validation split by chance)."""

    total: int
    every: int
    warmup: int
    min_steps: int
    patience: int
    batch_size: int
    metric: str
    rc_augment: bool
    rc_average: bool
    min_lr_ratio: float = 0.05
    steps_per_epoch: int = 0
    epochs: float = 0.0
    grad_clip: float = 1.0
    ema: float = 0.0
    select_from: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- data helpers
def take(y, idx) -> np.ndarray:
    """Targets of ``idx``: rows of an array, or a stack of per-sequence arrays."""
    if isinstance(y, np.ndarray):
        return y[idx]
    return np.stack([y[i] for i in idx])


class Batches:
    """Endless shuffled batches of indices ``0..n-1``: a new permutation drawn
    from ``rng`` at the start of every epoch. Its position (the epoch's
    permutation and the next offset) is part of a loop's checkpoint."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.perm: Optional[np.ndarray] = None
        self.pos = 0

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> np.ndarray:
        if self.perm is None or self.pos >= self.n:
            self.perm = self.rng.permutation(self.n)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        t = {} if self.perm is None else {"batches.perm": torch.from_numpy(np.ascontiguousarray(self.perm))}
        return t, {"pos": self.pos, "n": self.n, "batch_size": self.batch_size}

    def load(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        if int(meta["n"]) != self.n or int(meta["batch_size"]) != self.batch_size:
            raise ValueError(f"batches of {meta['batch_size']} over {meta['n']} sequences, now {self.batch_size} "
                             f"over {self.n}")
        self.perm = tensors["batches.perm"].numpy() if "batches.perm" in tensors else None
        self.pos = int(meta["pos"])


def batches(n: int, batch_size: int, rng: np.random.Generator) -> Batches:
    """Endless shuffled batches of indices (reshuffled every epoch)."""
    return Batches(n, batch_size, rng)


def group_by_length(seqs: Sequence[np.ndarray], idx) -> List[List[int]]:
    groups: Dict[int, List[int]] = {}
    for i in idx:
        groups.setdefault(len(seqs[i]), []).append(int(i))
    return list(groups.values())


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked, else a no-op context."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def predict(model: Predictor, seqs, batch_size: int, device, rc_average: bool, bf16: bool = True):
    """Predictions as the metrics want them: (n, n_classes) array, or one
    (L, n_classes) array per sequence for a token head."""
    with autocast(torch.device(device), bf16):
        if model.head_cfg.per_token:
            return predict_tokens(model, seqs, batch_size, device, rc_average)
        return predict_proba(model, seqs, batch_size, device, rc_average)


# --------------------------------------------------------------------------- evaluation
def _ce(task: str, y, pred) -> float:
    eps = 1e-7
    if task == "token":
        tot, n = 0.0, 0
        for yt, p in zip(y, pred):
            ok = yt >= 0
            tot -= float(np.log(np.clip(p[ok, yt[ok]], eps, 1.0)).sum())
            n += int(ok.sum())
        return tot / max(n, 1)
    p = np.clip(np.asarray(pred, dtype=np.float64), eps, 1 - eps)
    if task == "multilabel":
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def evaluate(task: str, y, pred, classes: Sequence[str], threshold: float = 0.5) -> Dict[str, Any]:
    """Metrics of predictions for the task, with ``loss`` (cross-entropy, or MSE
    for regression) added."""
    if task == "token":
        m = token_metrics(y, pred, classes)
        m["loss"] = _ce(task, y, pred)
        return m
    m = compute_metrics(task, y, pred, classes, threshold=threshold)
    m["loss"] = m["mse"] if task == "regression" else _ce(task, y, pred)
    return m


def score(metrics: Dict[str, Any], metric: str) -> Tuple[float, float]:
    """Higher is better: (metric, -loss); ties on the metric (e.g. AUROC 1.0)
    go to the lower validation loss. An undefined metric scores by the loss."""
    loss = metrics.get("loss")
    loss = math.inf if loss is None else float(loss)
    v = metrics.get(metric)
    if v is None:
        return (-loss, -loss)
    v = float(v)
    return ((-v if metric in LOWER_IS_BETTER else round(v, 6)), -loss)


class EarlyStopping:
    """Validation bookkeeping: score each evaluation, keep the best state of
    ``module`` (among evaluations from step ``select_from`` on), count
    evaluations without improvement against ``patience`` (only once
    ``min_steps`` are done)."""

    def __init__(self, module: torch.nn.Module, task: str, y_va, classes: Sequence[str], metric: str,
                 patience: int, min_steps: int = 0, total: Optional[int] = None, select_from: int = 0):
        self.module, self.task, self.y_va, self.classes = module, task, y_va, list(classes)
        self.metric, self.patience, self.min_steps, self.total = metric, patience, min_steps, total
        self.select_from = select_from
        self.best: Tuple[float, float] = (-math.inf, -math.inf)
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.best_step, self.bad = 0, 0
        self.best_val: Optional[Dict[str, Any]] = None
        self.best_pred = None
        self.history: List[Dict[str, Any]] = []

    def update(self, step: int, train_loss: float, pred) -> bool:
        """Record one evaluation; True when training should stop."""
        thr = 0.5
        if self.task == "binary" and self.metric == "mcc":  # MCC at the threshold it would be used with
            thr = choose_threshold(self.y_va, np.asarray(pred)[:, 1])[0]
        vm = evaluate(self.task, self.y_va, pred, self.classes, threshold=thr)
        sc = score(vm, self.metric)
        self.history.append({"step": step, "train_loss": train_loss, "val_loss": vm["loss"],
                             f"val_{self.metric}": vm.get(self.metric)})
        if step < self.select_from and not (self.total is not None and step >= self.total):
            return False
        if sc > self.best:
            self.best, self.best_step, self.bad, self.best_val, self.best_pred = sc, step, 0, vm, pred
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}
            return False
        self.bad += 1
        if self.bad >= self.patience and step >= self.min_steps and (self.total is None or step < self.total):
            log.info("early stopping at step %d (best validation %s %.4f at step %d)", step, self.metric,
                     abs(self.best[0]), self.best_step)
            return True
        return False

    def state(self, with_best_state: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """(tensors, JSON meta) of the bookkeeping, for a checkpoint; the best
        state's tensors only when ``with_best_state``."""
        from mambadna.io.files import jsonable

        t: Dict[str, torch.Tensor] = {}
        if with_best_state and self.best_state is not None:
            t.update((f"early_stopping.best_state.{k}", v) for k, v in self.best_state.items())
        pt, note = arrays_to_tensors("early_stopping.best_pred", self.best_pred)
        t.update(pt)
        return t, {"best": list(self.best), "best_step": self.best_step, "bad": self.bad,
                   "best_val": jsonable(self.best_val), "history": jsonable(self.history), "best_pred": note,
                   "best_state": bool(with_best_state and self.best_state is not None)}

    def load(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        """Inverse of :meth:`state` (without the best state, ``best_state`` stays as it is)."""
        self.best = tuple(float(x) for x in meta["best"])  # type: ignore[assignment]
        self.best_step, self.bad = int(meta["best_step"]), int(meta["bad"])
        self.best_val, self.history = meta["best_val"], list(meta["history"])
        self.best_pred = tensors_to_arrays("early_stopping.best_pred", tensors, meta["best_pred"])
        if meta["best_state"]:
            pre = "early_stopping.best_state."
            self.best_state = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}

    def restore(self) -> None:
        """Load the best state back into ``module``."""
        if self.best_state is not None:
            self.module.load_state_dict(self.best_state)

    def info(self, steps: int) -> Dict[str, Any]:
        return {"steps": steps, "best_step": self.best_step, "val_metric": self.metric, "history": self.history}


class WeightAverage:
    """Exponential moving average of ``module``'s floating-point parameters and
    buffers (fp32 copies): :meth:`update` after each optimizer step,
    ``with swapped():`` runs with the averaged weights in place. Its tensors
    are part of a loop's checkpoint. The module's tensors are updated in place
    from here on (``load_state_dict`` does), not replaced."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay, self.t = float(decay), 0
        sd = module.state_dict()
        self.names = [k for k, v in sd.items() if v.is_floating_point()]
        self.live = [sd[k] for k in self.names]  # detached views of the module's own storage
        self.avg = [v.detach().float().clone() for v in self.live]

    @torch.no_grad()
    def update(self) -> None:
        self.t += 1
        d = min(self.decay, (1.0 + self.t) / (10.0 + self.t))
        torch._foreach_lerp_(self.avg, [v.float() for v in self.live], 1.0 - d)

    @contextlib.contextmanager
    def swapped(self):
        live = self.live
        keep = [v.detach().clone() for v in live]
        with torch.no_grad():
            for v, a in zip(live, self.avg):
                v.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for v, k in zip(live, keep):
                    v.copy_(k)

    def state(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        return ({f"ema.{k}": a.cpu() for k, a in zip(self.names, self.avg)}, {"t": self.t, "decay": self.decay})

    def load(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> None:
        self.t = int(meta["t"])
        for i, k in enumerate(self.names):
            self.avg[i].copy_(tensors[f"ema.{k}"])


class LoopState:
    """Everything a training loop's next steps depend on, at a step boundary:
    the trained ``module``'s weights, the optimizer, the numpy generator that
    draws batches and flips, the batch position, torch's RNG (dropout) and the
    early-stopping record. :meth:`state` gives (tensors, JSON meta) for a
    checkpoint (no pickle), :meth:`load` puts them back and returns the step;
    the learning rate is a function of the step (nothing to save)."""

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, rng: np.random.Generator,
                 batches: Batches, stopper: EarlyStopping, ema: Optional[WeightAverage] = None):
        self.module, self.optimizer, self.rng, self.batches, self.stopper = module, optimizer, rng, batches, stopper
        self.ema = ema

    def state(self, step: int) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        t = {f"module.{k}": v.detach().contiguous().cpu() for k, v in self.module.state_dict().items()}
        ot, om = optimizer_state(self.optimizer, prefix="optimizer.")
        t.update(ot)
        t.update(rng_state())
        bt, bm = self.batches.state()
        t.update(bt)
        current = self.stopper.best_step == step and self.stopper.best_state is not None  # not stored twice
        st, sm = self.stopper.state(with_best_state=not current)
        t.update(st)
        sm["best_state_is_current"] = current
        meta = {"step": step, "optimizer": om, "rng": generator_state(self.rng), "batches": bm,
                "early_stopping": sm}
        if self.ema is not None:
            et, meta["ema"] = self.ema.state()
            t.update(et)
        return t, meta

    def load(self, tensors: Dict[str, torch.Tensor], meta: Dict[str, Any], path: Any) -> int:
        """Restore a :meth:`state`; CheckpointError naming ``path`` when it does not fit."""
        from mambadna.errors import CheckpointError

        try:
            own = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
            self.module.load_state_dict(own, strict=True)
            load_optimizer_state(self.optimizer, tensors, meta["optimizer"], path, prefix="optimizer.")
            set_generator_state(self.rng, meta["rng"])
            self.batches.load(tensors, meta["batches"])
            self.stopper.load(tensors, meta["early_stopping"])
            if self.ema is not None:
                self.ema.load(tensors, meta["ema"])
            if meta["early_stopping"].get("best_state_is_current"):  # the state validated: averaged or not
                with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
                    self.stopper.best_state = {k: v.detach().cpu().clone()
                                               for k, v in self.stopper.module.state_dict().items()}
            step = int(meta["step"])
        except CheckpointError:
            raise
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(path, f"trainer state does not fit this run ({e})") from None
        set_rng_state(tensors)
        return step


class StepCheckpoint:
    """What a training loop calls to be resumable (this base keeps nothing):
    :meth:`start` returns a saved ``(tensors, meta, path)`` to continue from,
    or None; :meth:`step_done` runs after every finished step (after its
    validation) with a callable giving the loop's state: it may write a
    checkpoint, and may end the run (raising, e.g. Interrupted)."""

    def start(self) -> Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any], Any]]:
        return None

    def loop(self):
        """Context the loop's steps run in (e.g. signals wait for the step boundary)."""
        return contextlib.nullcontext()

    def step_done(self, step: int, total: int,
                  state: Callable[[], Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]) -> None:
        return None


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="step", leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------- the loop
def train_loop(plan: Plan, opt: torch.optim.Optimizer, step_fn: Callable[[], float],
               validate: Callable[[], Any], loop: LoopState, checkpoint: Optional[StepCheckpoint] = None,
               progress: bool = False, desc: str = "finetune") -> int:
    """The step loop every fine-tuning mode runs: warm-up + cosine schedule on ``opt``'s
    groups (their ``lr`` now is the peak), ``step_fn()`` (one step's loss, gradients
    accumulated; a non-finite one stops with :class:`TrainingError`), gradient clipping
    (``plan.grad_clip``), the optimizer step, the weight average, and every ``plan.every``
    steps ``validate()`` (validation predictions, the average swapped in) for the early
    stopper; resumable through ``checkpoint`` (``loop`` is what it saves). Returns the
    steps done; the best state is loaded back."""
    base = [g["lr"] for g in opt.param_groups]  # (before a resumed state overwrites them)
    params = [p for g in opt.param_groups for p in g["params"]]
    stopper, ema = loop.stopper, loop.ema
    checkpoint = checkpoint or StepCheckpoint()
    saved = checkpoint.start()
    step = loop.load(*saved) if saved is not None else 0
    bar = _progress(plan.total, progress, desc)
    bar.update(step)
    try:
        with checkpoint.loop():
            while step < plan.total:
                f = warmup_cosine(step, plan.total, max(plan.warmup, 1), plan.min_lr_ratio)
                for g, b in zip(opt.param_groups, base):
                    g["lr"] = b * f
                opt.zero_grad(set_to_none=True)
                loss = step_fn()
                if not math.isfinite(loss):
                    raise TrainingError(f"non-finite training loss at step {step}")
                if plan.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, plan.grad_clip)
                opt.step()
                if ema is not None:
                    ema.update()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
                if step % plan.every == 0 or step == plan.total:
                    with ema.swapped() if ema is not None else contextlib.nullcontext():
                        stop = stopper.update(step, loss, validate())
                    if stop:
                        break
                checkpoint.step_done(step, plan.total, lambda: loop.state(step))
    finally:
        bar.close()
    stopper.restore()
    return step


def fit(model: Predictor, groups: List[Dict[str, Any]], plan: Plan, seqs_tr: Sequence[np.ndarray], y_tr,
        seqs_va: Sequence[np.ndarray], y_va, device: Union[str, torch.device], seed: int = 0,
        weight_decay: float = 0.01, progress: bool = False, desc: str = "finetune", bf16: bool = True,
        module: Optional[torch.nn.Module] = None,
        checkpoint: Optional[StepCheckpoint] = None) -> Tuple[EarlyStopping, int]:
    """Train ``model`` on (seqs_tr, y_tr) with early stopping on (seqs_va, y_va).

    groups: AdamW parameter groups, each with its peak ``lr``. ``module``: what
    early stopping snapshots and restores (default: the whole model).
    Per-token targets (a list of (L,) arrays) are reverse-complemented with
    their sequence. ``checkpoint``: continue from its saved state and tell it
    of every step (see :class:`StepCheckpoint`). Returns (the early-stopping
    record, steps done); the best state is loaded back.
    """
    device = torch.device(device)
    task = model.head_cfg.task
    per_token = model.head_cfg.per_token
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    it = batches(len(seqs_tr), plan.batch_size, rng)
    stopper = EarlyStopping(module if module is not None else model, task, y_va, model.head_cfg.classes,
                            plan.metric, plan.patience, plan.min_steps, plan.total, plan.select_from)
    ema = WeightAverage(model, plan.ema) if plan.ema > 0 else None

    def step_fn() -> float:
        model.train()
        idx = next(it)
        loss_sum = 0.0
        for grp in group_by_length(seqs_tr, idx):
            flip = rng.random(len(grp)) < 0.5 if plan.rc_augment else np.zeros(len(grp), bool)
            ids = np.stack([reverse_complement(seqs_tr[i]) if fl else seqs_tr[i]
                            for i, fl in zip(grp, flip)]).astype(np.int64)
            tgt = take(y_tr, grp)
            if per_token and flip.any():
                tgt = tgt.copy()
                tgt[flip] = tgt[flip][:, ::-1]
            x = torch.as_tensor(ids, device=device)
            t = torch.as_tensor(np.ascontiguousarray(tgt), device=device)
            with autocast(device, bf16):
                logits = model(x)
            loss = model.loss(logits, t) * (len(grp) / len(idx))
            loss.backward()
            loss_sum += float(loss.detach())
        return loss_sum

    step = train_loop(plan, opt, step_fn,
                      lambda: predict(model, seqs_va, plan.batch_size * 2, device, plan.rc_average, bf16),
                      LoopState(model, opt, rng, it, stopper, ema), checkpoint, progress, desc)
    return stopper, step
