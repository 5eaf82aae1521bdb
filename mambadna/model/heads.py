"""Sequence classification on top of a Mamba encoder: pooling + MLP head.

Tasks: ``binary`` (one logit, sigmoid), ``multiclass`` (one logit per class,
softmax) and ``multilabel`` (one logit per label, independent sigmoids).

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

TASKS = ("binary", "multiclass", "multilabel")
HEAD_WEIGHTS = "head.safetensors"

Tensor = torch.Tensor


@dataclass
class HeadConfig:
    """Classification head settings, saved under ``head`` in config.json.

    classes: class names (binary: [negative, positive]; multilabel: labels).
    task: 'binary' | 'multiclass' | 'multilabel'.
    pooling: one of mean/max/first/last/center; center_width for 'center'.
    layer: encoder layer whose output is pooled (-1 = last, final-normed).
    hidden: widths of the MLP hidden layers ([] = a linear head).
    dropout: dropout before each linear layer (training only).
    rc_average: average forward and reverse-complement predictions at inference.
    """

    classes: List[str]
    task: str = "binary"
    pooling: str = "mean"
    center_width: int = 64
    layer: int = -1
    hidden: List[int] = field(default_factory=lambda: [64])
    dropout: float = 0.1
    rc_average: bool = False

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
        self.hidden = [int(h) for h in self.hidden]

    @property
    def n_outputs(self) -> int:
        """Number of logits: 1 for binary, else one per class/label."""
        return 1 if self.task == "binary" else len(self.classes)

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


class SequenceClassifier(nn.Module):
    """Encoder + pooling + MLP head.

    forward(ids (batch, L) int64) -> logits (batch, n_outputs). Sequences in a
    batch share one length (no padding; see :func:`iter_length_groups`).
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
        """Pooled encoder features: ids (batch, L) -> (batch, feature_dim) fp32.

        For an RC-equivariant encoder the features are RC-invariant exactly:
        features(RC x) == features(x).
        """
        cfg = self.head_cfg
        h = self.encoder.hidden_states(ids, layer=cfg.layer)
        p = pool(h, cfg.pooling, None, cfg.center_width)
        if self.rc_equivariant:
            p_rc = pool(rc_hidden_valid(h), cfg.pooling, None, cfg.center_width)
            p = 0.5 * (p + p_rc)  # RC-invariant; mirror-symmetric for mean/max
            p = p[:, : self.feature_dim]
        return p

    def forward(self, ids: Tensor) -> Tensor:
        """ids (batch, L) -> logits (batch, n_outputs)."""
        return self.head(self.features(ids).to(self.head[-1].weight.dtype))

    def probabilities(self, logits: Tensor) -> Tensor:
        """logits (batch, n_outputs) -> probabilities (batch, n_classes):
        binary gives [1-p, p]; multiclass softmax; multilabel sigmoids."""
        return logits_to_proba(logits, self.head_cfg.task)

    @torch.no_grad()
    def predict_batch(self, ids: Tensor, rc_average: Optional[bool] = None) -> Tensor:
        """Probabilities (batch, n_classes) for equal-length ids (batch, L).

        With ``rc_average`` (default: the head's setting) the probabilities
        of x and of its reverse complement are averaged (Caduceus-Ph).
        """
        rc = self.head_cfg.rc_average if rc_average is None else rc_average
        p = self.probabilities(self(ids).float())
        if rc and not self.rc_equivariant:
            p = 0.5 * (p + self.probabilities(self(reverse_complement(ids)).float()))
        return p

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Training loss. targets: binary (batch,) {0,1}; multiclass (batch,)
        class index; multilabel (batch, n_labels) {0,1}."""
        task = self.head_cfg.task
        if task == "binary":
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), targets.float())
        if task == "multiclass":
            return F.cross_entropy(logits.float(), targets.long())
        return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def logits_to_proba(logits: Tensor, task: str) -> Tensor:
    """Map head logits (batch, n_outputs) to class probabilities (batch, n_classes)."""
    if task == "binary":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    if task == "multiclass":
        return torch.softmax(logits, dim=-1)
    return torch.sigmoid(logits)


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
def predict_proba(model: SequenceClassifier, seqs: Sequence[np.ndarray], batch_size: int = 64,
                  device: Union[str, torch.device] = "cpu", rc_average: Optional[bool] = None,
                  progress=None) -> np.ndarray:
    """Class probabilities (n, n_classes) for token-id sequences of any lengths."""
    model.eval()
    out = np.zeros((len(seqs), len(model.head_cfg.classes)), dtype=np.float32)
    for sel, ids in iter_length_groups(seqs, batch_size):
        p = model.predict_batch(torch.as_tensor(ids, device=device), rc_average=rc_average)
        out[sel] = p.cpu().numpy()
        if progress is not None:
            progress.update(len(sel))
    return out


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
    head_cfg = HeadConfig(classes=["0", "1"], pooling=pooling, center_width=center_width,
                          layer=layer, hidden=[])
    clf = SequenceClassifier(encoder, head_cfg).to(device)
    clf.eval()
    out = None
    for sel, ids in iter_length_groups(seqs, batch_size):
        x = torch.as_tensor(ids, device=device)
        f = clf.features(x)
        if rc_average and not clf.rc_equivariant:
            f = 0.5 * (f + clf.features(reverse_complement(x)))
        f = f.float().cpu().numpy()
        if out is None:
            out = np.zeros((len(seqs), f.shape[1]), dtype=np.float32)
        out[sel] = f
        if progress is not None:
            progress.update(len(sel))
    if out is None:
        out = np.zeros((0, clf.feature_dim), dtype=np.float32)
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
