"""Sequence classification on top of a Mamba encoder: pooling + MLP head.

Tasks: ``binary`` (one logit, sigmoid), ``multiclass`` (one logit per class,
softmax), ``multilabel`` (one logit per label, independent sigmoids),
``regression`` (one output, trained on standardised targets, returned in the
target's units) and ``token`` (per-base classification: one softmax per
position, no pooling).

Reverse-complement handling
---------------------------
* ``rc_average`` (Caduceus-Ph, post-hoc): at inference the probabilities of a
  sequence and of its reverse complement are averaged, so predictions are
  RC-invariant for any encoder.
* RC-equivariant encoder (``ModelConfig.rc_equivariant``, Caduceus-PS): the
  encoder satisfies ``hidden(RC x) = hidden(x).flip(1).flip(2)``. The head
  then pools RC-invariantly: it averages the pooled vector of the hidden
  states and of their RC image (positions reversed, channels reversed) and
  keeps the first half of the (now mirror-symmetric) channels. The features,
  and so the predictions, of x and RC(x) are equal without any averaging.

For ``token`` heads the per-position features of an RC-equivariant encoder
are made RC-invariant the same way (the mirror-symmetric half of each
position's channels), and ``rc_average`` averages the prediction at position
t of x with the one at position L-1-t of RC(x).

Inference never pads: :func:`predict_proba` and :func:`pooled_embeddings`
run each batch in groups of equal length, so bidirectional encoders see
exactly the sequence they are given.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambadna.components.checkpoint import CONFIG, load_model, load_state_dict, read_config, save_model
from mambadna.errors import CheckpointError
from mambadna.model.encoder import MambaDNA
from mambadna.inference.pooling import POOLED, pool
from mambadna.tokenizer import reverse_complement

TASKS = ("binary", "multiclass", "multilabel", "regression", "token")
HEAD_WEIGHTS = "head.safetensors"

Tensor = torch.Tensor


@dataclass
class HeadConfig:
    """Classification head settings, saved under ``head`` in config.json.

    classes: class names (binary: [negative, positive]; multilabel: labels;
    regression: [target name]; token: per-base classes, background first).
    task: 'binary' | 'multiclass' | 'multilabel' | 'regression' | 'token'.
    pooling: one of mean/max/first/last/center; center_width for 'center'.
    layer: encoder layer whose output is pooled (-1 = last, final-normed).
    hidden: widths of the MLP hidden layers ([] = a linear head).
    dropout: dropout before each linear layer (training only).
    rc_average: average forward and reverse-complement predictions at inference.
    threshold: decision threshold on P(positive) of a binary task (fine-tuning
    chooses it on the validation split).
    target_mean, target_std: regression targets are standardised with these
    for training; predictions come back in the target's units.
    """

    classes: List[str]
    task: str = "binary"
    pooling: str = "mean"
    center_width: int = 64
    layer: int = -1
    hidden: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    rc_average: bool = False
    threshold: float = 0.5
    target_mean: float = 0.0
    target_std: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.pooling not in POOLED:
            raise ValueError(f"pooling must be one of {POOLED}, got {self.pooling!r}")
        self.classes = [str(c) for c in self.classes]
        if self.task == "binary" and len(self.classes) != 2:
            raise ValueError(f"binary task needs exactly 2 classes, got {self.classes}")
        if self.task == "multiclass" and len(self.classes) < 2:
            raise ValueError(f"multiclass task needs at least 2 classes, got {self.classes}")
        if self.task == "multilabel" and len(self.classes) < 1:
            raise ValueError("multilabel task needs at least 1 label")
        if self.task == "regression" and len(self.classes) != 1:
            raise ValueError(f"regression task needs exactly 1 target name, got {self.classes}")
        if self.task == "token" and len(self.classes) < 2:
            raise ValueError(f"token task needs at least 2 classes, got {self.classes}")
        if not self.target_std > 0:
            raise ValueError(f"target_std must be > 0, got {self.target_std}")
        self.hidden = [int(h) for h in self.hidden]

    @property
    def n_outputs(self) -> int:
        """Number of logits: 1 for binary and regression, else one per class/label."""
        return 1 if self.task in ("binary", "regression") else len(self.classes)

    @property
    def per_token(self) -> bool:
        return self.task == "token"

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "HeadConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rc_hidden_valid(h: Tensor) -> Tensor:
    """Reverse-complement image of RC-equivariant hidden states
    (batch, L, d) -> (batch, L, d): positions and channels reversed."""
    return h.flip(1).flip(2)


def pool_features(h: Tensor, pooling: str, center_width: int = 64, rc_equivariant: bool = False) -> Tensor:
    """Pooled features (batch, d) of hidden states (batch, L, d_model): the one
    pooling of heads, probes and scorers. An RC-equivariant encoder's features
    are made RC-invariant (the pooled forward and RC images averaged; d = d_model // 2)."""
    p = pool(h, pooling, None, center_width)
    if rc_equivariant:
        p = 0.5 * (p + pool(rc_hidden_valid(h), pooling, None, center_width))  # mirror-symmetric for mean/max
        p = p[:, : h.shape[-1] // 2]
    return p


class Predictor(nn.Module):
    """What every model with a head shares (the fine-tuned classifier and the
    CNN baselines): ``head_cfg``, ``forward(ids) -> logits``, and from them
    probabilities, RC-averaged predictions and the training loss.
    Subclasses set ``head_cfg`` and implement ``forward``."""

    head_cfg: HeadConfig

    @property
    def rc_equivariant(self) -> bool:
        return False

    def probabilities(self, logits: Tensor) -> Tensor:
        """logits (batch, n_outputs) -> probabilities (batch, n_classes):
        binary gives [1-p, p]; multiclass softmax; multilabel sigmoids;
        regression the prediction in the target's units (batch, 1); token
        (batch, L, n_classes) softmax per position."""
        hc = self.head_cfg
        if hc.task == "regression":
            return logits[:, :1].float() * hc.target_std + hc.target_mean
        return logits_to_proba(logits, hc.task)

    @torch.no_grad()
    def predict_batch(self, ids: Tensor, rc_average: Optional[bool] = None) -> Tensor:
        """Probabilities (batch, n_classes) for equal-length ids (batch, L).

        With ``rc_average`` (default: the head's setting) the probabilities
        of x and of its reverse complement are averaged (Caduceus-Ph).
        """
        rc = self.head_cfg.rc_average if rc_average is None else rc_average
        p = self.probabilities(self(ids).float())
        if rc and not self.rc_equivariant:
            p_rc = self.probabilities(self(reverse_complement(ids)).float())
            p = 0.5 * (p + (p_rc.flip(1) if self.head_cfg.per_token else p_rc))
        return p

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Training loss. targets: binary (batch,) {0,1}; multiclass (batch,)
        class index; multilabel (batch, n_labels) {0,1}; regression (batch,)
        values in the target's units (MSE on standardised values); token
        (batch, L) class index per position (-100: no loss there)."""
        hc = self.head_cfg
        task = hc.task
        if task == "regression":
            z = (targets.float() - hc.target_mean) / hc.target_std
            return F.mse_loss(logits[:, 0].float(), z)
        if task == "token":
            return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.long().reshape(-1),
                                   ignore_index=-100)
        if task == "binary":
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())
        if task == "multiclass":
            return F.cross_entropy(logits.float(), targets.long())
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


class SequenceClassifier(Predictor):
    """Encoder + pooling + MLP head.

    forward(ids (batch, L) int64) -> logits (batch, n_outputs), or
    (batch, L, n_outputs) for a ``token`` head. Sequences in a batch share one
    length (no padding; see :func:`iter_length_groups`).
    """

    def __init__(self, encoder: MambaDNA, head_cfg: HeadConfig):
        super().__init__()
        self.encoder = encoder
        self.head_cfg = head_cfg
        self.feature_dim = self._feature_dim(encoder, head_cfg)
        layers: List[nn.Module] = []
        d = self.feature_dim
        for h in head_cfg.hidden:
            layers += [nn.Dropout(head_cfg.dropout), nn.Linear(d, h), nn.GELU()]
            d = h
        layers += [nn.Dropout(head_cfg.dropout), nn.Linear(d, head_cfg.n_outputs)]
        self.head = nn.Sequential(*layers)

    @staticmethod
    def _feature_dim(encoder: MambaDNA, head_cfg: HeadConfig) -> int:
        d = encoder.config.d_model
        return d // 2 if encoder.config.rc_equivariant else d

    @property
    def rc_equivariant(self) -> bool:
        return bool(self.encoder.config.rc_equivariant)

    def features(self, ids: Tensor) -> Tensor:
        """Pooled encoder features: ids (batch, L) -> (batch, feature_dim) fp32
        ((batch, L, feature_dim) for a token head).

        For an RC-equivariant encoder the features are RC-invariant exactly:
        features(RC x) == features(x) (per token: position t of x and L-1-t of RC x).
        """
        return self.pool_hidden(self.encoder.hidden_states(ids, layer=self.head_cfg.layer))

    def pool_hidden(self, h: Tensor) -> Tensor:
        """:meth:`features` from the encoder's hidden states of the head's layer
        (batch, L, d_model) (attributions run the encoder from one-hot inputs)."""
        cfg = self.head_cfg
        if cfg.per_token:
            if self.rc_equivariant:
                h = (0.5 * (h + h.flip(2)))[..., : self.feature_dim]
            return h
        return pool_features(h, cfg.pooling, cfg.center_width, self.rc_equivariant)

    def forward(self, ids: Tensor) -> Tensor:
        """ids (batch, L) -> logits (batch, n_outputs) ((batch, L, n_outputs) per token)."""
        return self.head(self.features(ids).to(self.head[-1].weight.dtype))


def logits_to_proba(logits: Tensor, task: str) -> Tensor:
    """Map head logits (batch, n_outputs) to class probabilities (batch, n_classes)."""
    if task == "binary":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    if task in ("multiclass", "token"):
        return torch.softmax(logits, dim=-1)
    if task == "regression":
        return logits[..., :1]
    return torch.sigmoid(logits)


def predicted_labels(proba: np.ndarray, head_cfg: HeadConfig) -> List[str]:
    """Decisions from probabilities (n, n_classes) as the head makes them:
    binary at ``head_cfg.threshold``, multiclass argmax, multilabel >= 0.5
    (';'-joined, '.' for none)."""
    classes, task = head_cfg.classes, head_cfg.task
    if task == "binary":
        return [classes[int(p >= head_cfg.threshold)] for p in proba[:, 1]]
    if task == "multilabel":
        return [";".join(c for c, v in zip(classes, row) if v >= 0.5) or "." for row in proba]
    if task == "regression":
        return [f"{v:.6g}" for v in proba[:, 0]]
    return [classes[int(i)] for i in np.asarray(proba).argmax(-1)]


# --------------------------------------------------------------------------- batching
def iter_length_groups(seqs: Sequence[np.ndarray], batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Yield (indices, ids (n, L) int64) batches of equal-length sequences,
    at most ``batch_size`` each, so no padding is ever needed. Order within a
    length is preserved; lengths are visited in order of first appearance."""
    by_len: Dict[int, List[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for L, idx in by_len.items():
        for k in range(0, len(idx), batch_size):
            sel = np.asarray(idx[k:k + batch_size])
            yield sel, np.stack([np.asarray(seqs[i], dtype=np.int64) for i in sel]) if L else np.zeros((len(sel), 0), np.int64)


@torch.no_grad()
def predict_proba(model: Predictor, seqs: Sequence[np.ndarray], batch_size: int = 64,
                  device: Union[str, torch.device] = "cpu", rc_average: Optional[bool] = None,
                  progress=None) -> np.ndarray:
    """Class probabilities (n, n_classes) for token-id sequences of any lengths
    (regression: the predicted values (n, 1); token heads: use :func:`predict_tokens`)."""
    if model.head_cfg.per_token:
        raise ValueError("predict_proba: a token head predicts per position; use predict_tokens")
    model.eval()
    out = np.zeros((len(seqs), len(model.head_cfg.classes)), dtype=np.float32)
    for sel, ids in iter_length_groups(seqs, batch_size):
        p = model.predict_batch(torch.as_tensor(ids, device=device), rc_average=rc_average)
        out[sel] = p.cpu().numpy()
        if progress is not None:
            progress.update(len(sel))
    return out


@torch.no_grad()
def predict_tokens(model: Predictor, seqs: Sequence[np.ndarray], batch_size: int = 64,
                   device: Union[str, torch.device] = "cpu", rc_average: Optional[bool] = None) -> List[np.ndarray]:
    """Per-position class probabilities of a token head: one (L_i, n_classes)
    float32 array per sequence, in input order."""
    model.eval()
    out: List[Optional[np.ndarray]] = [None] * len(seqs)
    for sel, ids in iter_length_groups(seqs, batch_size):
        p = model.predict_batch(torch.as_tensor(ids, device=device), rc_average=rc_average).float().cpu().numpy()
        for k, i in enumerate(sel):
            out[i] = p[k]
    return out  # type: ignore[return-value]


@torch.no_grad()
def pooled_embeddings(encoder: MambaDNA, seqs: Sequence[np.ndarray], pooling: str = "mean",
                      center_width: int = 64, layer: int = -1, batch_size: int = 64,
                      device: Union[str, torch.device] = "cpu", rc_average: bool = False,
                      progress=None) -> np.ndarray:
    """Frozen pooled embeddings (n, feature_dim) fp32 of token-id sequences.

    RC-equivariant encoders pool RC-invariantly (feature_dim = d_model // 2);
    otherwise feature_dim = d_model and ``rc_average`` averages the pooled
    embeddings of x and RC(x).
    """
    from mambadna.inference.engine import Embedder

    engine = Embedder(encoder.to(device), device=device, pool=None, layer=layer, batch_size=batch_size)
    rc_eq = bool(encoder.config.rc_equivariant)
    d = encoder.config.d_model // 2 if rc_eq else encoder.config.d_model
    out = np.zeros((len(seqs), d), dtype=np.float32)
    with torch.no_grad():
        for sel, ids in iter_length_groups(seqs, batch_size):
            x = torch.as_tensor(ids, device=engine.device)
            f = pool_features(engine.hidden(x, layer), pooling, center_width, rc_eq)
            if rc_average and not rc_eq:
                f = 0.5 * (f + pool_features(engine.hidden(reverse_complement(x), layer), pooling, center_width))
            out[sel] = f.float().cpu().numpy()
            if progress is not None:
                progress.update(len(sel))
    return out


# --------------------------------------------------------------------------- save / load
def save_classifier(model: SequenceClassifier, directory: Union[str, Path], extra: Optional[Dict] = None) -> None:
    """Write a fine-tuned classifier into an existing ``directory``: the
    encoder as ``model.safetensors`` (loadable by :func:`load_model`), the head
    as ``head.safetensors``, and config.json with a ``head`` section."""
    from safetensors.torch import save_file

    directory = Path(directory)
    info = {"head": model.head_cfg.to_dict()}
    if extra:
        info.update(extra)
    save_model(model.encoder, directory, extra=info)
    state = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    save_file(state, str(directory / HEAD_WEIGHTS), metadata={"format": "pt", "library": "mambadna"})
    from mambadna.io.files import publish_mode

    publish_mode(directory / HEAD_WEIGHTS)


def has_head(directory: Union[str, Path]) -> bool:
    """True when ``directory`` holds a fine-tuned classifier (config has a head)."""
    return "head" in read_config(directory)


def load_classifier(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> SequenceClassifier:
    """Load a classifier saved by :func:`save_classifier` (eval mode)."""
    directory = Path(directory)
    cfg = read_config(directory)
    if "head" not in cfg:
        raise CheckpointError(directory / CONFIG, "no 'head' section: not a fine-tuned classifier")
    try:
        head_cfg = HeadConfig.from_dict(cfg["head"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(directory / CONFIG, f"invalid head config: {e}") from None
    encoder = load_model(directory, "cpu")
    model = SequenceClassifier(encoder, head_cfg)
    state = load_state_dict(directory / HEAD_WEIGHTS)
    try:
        model.head.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(directory / HEAD_WEIGHTS, f"head weights do not match config: {e}") from None
    return model.to(device).eval()


def linear_head_from_logistic(model: SequenceClassifier, coef: np.ndarray, intercept: np.ndarray,
                              mean: Optional[np.ndarray] = None, scale: Optional[np.ndarray] = None) -> None:
    """Set a linear head (``hidden=[]``) from a fitted logistic regression on
    standardised features: logit = coef · ((f - mean) / scale) + intercept.

    coef (n_outputs, feature_dim), intercept (n_outputs,)."""
    lin = model.head[-1]
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    if mean is not None:
        coef = coef / scale[None, :]
        intercept = intercept - coef @ mean
    if coef.shape != tuple(lin.weight.shape):
        raise ValueError(f"coef shape {coef.shape} does not match head {tuple(lin.weight.shape)}")
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(coef, dtype=lin.weight.dtype))
        lin.bias.copy_(torch.as_tensor(intercept, dtype=lin.bias.dtype))
