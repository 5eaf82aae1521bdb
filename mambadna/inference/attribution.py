"""Attributions of fine-tuned heads over the one-hot input: saliency, input ×
gradient and integrated gradients.

The encoder's embedding is written as one-hot @ weights
(:meth:`MambaDNA.embed_onehot`, RC-equivariant branch included), so the
gradient of the head's output reaches every base: ``f`` maps a
(batch, L, vocab) float input to one number per sequence, the target class's
logit (``output="logit"``, default) or its probability. Attributions are the
A, C, G, T columns, (N, L, 4):

* ``saliency``: the gradient ∂f/∂x (signed; take ``abs()`` for the classic
  magnitude map);
* ``ixg``: input × gradient (non-zero on the sequence's own bases only);
* ``ig``: integrated gradients (Sundararajan et al. 2017) from a baseline
  along the straight path, trapezoid rule over ``n_steps`` intervals.
  Completeness: the attributions of a sequence sum to f(x) - f(baseline) up
  to the quadrature error (O(1/n_steps²)). Baselines: ``uniform`` (default:
  0.25 each of A, C, G, T, the mean base embedding) or ``zeros`` (no base).
  With ``zeros`` the path starts at a zero embedding, which the first
  block's RMSNorm blows up to unit scale: f jumps within the first percent
  of the path and the trapezoid rule needs hundreds of steps there (a
  completeness check tells: compare the sum with ``f(x) - f(baseline)``).

An RC-equivariant encoder gives RC-invariant heads, so its attributions are
RC-symmetric: attribute(RC x) equals attribute(x) with positions reversed and
A<->T, C<->G swapped. ``rc_average`` (other encoders) attributes
0.5 (f(x) + f(RC x)), which is RC-symmetric too.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Tuple, Union

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.model.heads import SequenceClassifier
from mambadna.tokenizer import A, C, G, T, encode

Tensor = torch.Tensor
METHODS = ("ig", "saliency", "ixg")
BASELINES = ("uniform", "zeros")
OUTPUTS = ("logit", "probability")
NUC = (A, C, G, T)
TOKENS_PER_PASS = {"cuda": 1 << 18, "cpu": 1 << 14}  # path points x length per forward + backward


class Attributor:
    """The scalar function f of a fine-tuned classifier over one-hot inputs,
    and its attributions.

    clf: a :class:`SequenceClassifier` with a sequence-level head; target:
    class name (default: the positive class of a binary head, the only output
    of a one-output head); output: ``logit`` or ``probability``; rc_average:
    attribute the average of f(x) and f(RC x) (default: the head's setting;
    ignored for RC-equivariant encoders, already RC-invariant).
    """

    def __init__(self, clf: SequenceClassifier, target: Optional[str] = None, output: str = "logit",
                 rc_average: Optional[bool] = None, device: Union[str, torch.device, None] = None):
        hc = clf.head_cfg
        if hc.per_token:
            raise InputError(None, "attributions need a sequence-level head (this one is per token)")
        if output not in OUTPUTS:
            raise InputError(None, f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.clf = clf.eval()
        self.device = torch.device(device) if device is not None else next(clf.parameters()).device
        self.clf.to(self.device)
        self.enc = clf.encoder
        self.output = output
        self.rc_average = bool(hc.rc_average if rc_average is None else rc_average) and not clf.rc_equivariant
        classes = list(hc.classes)
        if hc.task == "binary":
            if target is not None and target != classes[1]:
                raise InputError(None, f"--target: a binary head's output is its positive class {classes[1]!r}, "
                                       f"not {target!r}")
            target, self.index = classes[1], 0
        else:
            if target is None:
                if len(classes) != 1:
                    raise InputError(None, f"--target: name the class to attribute (one of {', '.join(classes)})")
                target = classes[0]
            if target not in classes:
                raise InputError(None, f"--target {target!r} is not a class of the head ({', '.join(classes)})")
            self.index = classes.index(target)
        self.target = target
        self.vocab = self.enc.config.vocab_size
        self.complement = self.enc.complement

    # -- the function ------------------------------------------------------
    def onehot(self, ids: Tensor) -> Tensor:
        """(B, L) token ids -> (B, L, vocab) float one-hot on the device."""
        return torch.nn.functional.one_hot(ids.long().to(self.device), self.vocab).float()

    def baseline(self, x: Tensor, kind: str = "uniform") -> Tensor:
        if kind not in BASELINES:
            raise InputError(None, f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}")
        b = torch.zeros_like(x)
        if kind == "uniform":
            b[..., list(NUC)] = 0.25
        return b

    def _f(self, x: Tensor) -> Tensor:
        enc, hc = self.enc, self.clf.head_cfg
        n = enc.config.n_layers
        stop = hc.layer % n
        h = enc.embed_onehot(x)
        for i in range(stop + 1):
            h = enc.run_layer(i, h)
        if stop == n - 1:
            h = enc.final_norm(h)
        head = self.clf.head
        logits = head(self.clf.pool_hidden(h).to(head[-1].weight.dtype)).float()
        if self.output == "probability" or hc.task == "regression":
            return self.clf.probabilities(logits)[:, -1 if hc.task == "binary" else self.index]
        return logits[:, self.index]

    def f(self, x: Tensor) -> Tensor:
        """f over one-hot inputs (B, L, vocab) -> (B,) fp32 (differentiable)."""
        y = self._f(x)
        if self.rc_average:
            y = 0.5 * (y + self._f(x.flip(1)[..., self.complement]))
        return y

    def _grad(self, x: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.f(x).sum(), x)
        return g

    # -- attributions ------------------------------------------------------
    def attribute_batch(self, ids: Tensor, method: str = "ig", n_steps: int = 50, baseline: str = "uniform",
                        points: Optional[int] = None) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
        """Equal-length ids (B, L) -> (attributions (B, L, 4), f(x) (B,),
        f(baseline) (B,) for ig else None). points: path points per forward."""
        if method not in METHODS:
            raise InputError(None, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        x = self.onehot(ids)
        B, L, _ = x.shape
        with torch.no_grad():
            fx = self.f(x).float()
        if method in ("saliency", "ixg"):
            g = self._grad(x)
            att = g if method == "saliency" else g * x
            return att[..., list(NUC)].float(), fx, None
        if n_steps < 1:
            raise InputError(None, f"--n-steps must be >= 1, got {n_steps}")
        x0 = self.baseline(x, baseline)
        with torch.no_grad():
            f0 = self.f(x0).float()
        alphas = torch.linspace(0, 1, n_steps + 1, device=self.device)
        w = torch.full((n_steps + 1,), 1.0 / n_steps, device=self.device)
        w[0] = w[-1] = 0.5 / n_steps  # trapezoid rule
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        k = max(1, (points or max(1, TOKENS_PER_PASS[kind] // max(1, L))) // B)
        total = torch.zeros_like(x)
        d = x - x0
        for s in range(0, n_steps + 1, k):
            a = alphas[s:s + k]
            path = (x0[None] + a[:, None, None, None] * d[None]).reshape(-1, L, x.shape[-1])
            g = self._grad(path).reshape(len(a), B, L, -1)
            total += (w[s:s + k, None, None, None] * g).sum(0)
        att = d * total
        return att[..., list(NUC)].float(), fx, f0


def _as_ids(seqs) -> List[np.ndarray]:
    if isinstance(seqs, (str, bytes)):
        seqs = [seqs]
    if isinstance(seqs, np.ndarray) and seqs.ndim == 2:
        return [np.asarray(r, dtype=np.int64) for r in seqs]
    if isinstance(seqs, torch.Tensor):
        return [r.cpu().numpy().astype(np.int64) for r in (seqs if seqs.ndim == 2 else seqs[None])]
    out = []
    for i, s in enumerate(seqs):
        out.append(encode(s, name=f"sequence {i}").astype(np.int64) if isinstance(s, (str, bytes))
                   else np.asarray(s, dtype=np.int64))
    return out


def iter_attributions(attr: Attributor, seqs: Iterable[np.ndarray], method: str = "ig", n_steps: int = 50,
                      baseline: str = "uniform", batch_size: Optional[int] = None, progress=None):
    """Yield ``(index, attributions (L, 4) float32, f(x), f(baseline) or nan)``
    per sequence, in input order; sequences are batched by equal length
    (``batch_size`` sequences per batch; default from the token budget)."""
    from mambadna.model.heads import iter_length_groups

    seqs = list(seqs)
    kind = "cuda" if attr.device.type == "cuda" else "cpu"
    res = {}
    nxt = 0
    lens = {len(s) for s in seqs}
    bs = batch_size or max(1, TOKENS_PER_PASS[kind] // max(1, max(lens, default=1)) //
                           (1 if method != "ig" else max(1, min(n_steps + 1, 8))))
    for sel, ids in iter_length_groups(seqs, bs):
        if ids.shape[1] == 0:
            raise InputError(None, f"sequence {int(sel[0]) + 1} is empty")
        a, fx, f0 = attr.attribute_batch(torch.as_tensor(ids), method, n_steps, baseline)
        a, fx = a.cpu().numpy(), fx.cpu().numpy()
        f0 = f0.cpu().numpy() if f0 is not None else np.full(len(sel), np.nan)
        for k, i in enumerate(sel):
            res[int(i)] = (a[k], float(fx[k]), float(f0[k]))
        if progress is not None:
            progress.update(len(sel))
        while nxt in res:
            yield (nxt,) + res.pop(nxt)
            nxt += 1
    while nxt in res:
        yield (nxt,) + res.pop(nxt)
        nxt += 1


def attribute(model: Union[str, SequenceClassifier], seqs, method: str = "ig", target: Optional[str] = None,
              n_steps: int = 50, baseline: str = "uniform", output: str = "logit",
              rc_average: Optional[bool] = None, batch_size: Optional[int] = None,
              device: Union[str, torch.device, None] = "auto") -> np.ndarray:
    """Attributions (N, L, 4) float32 over A, C, G, T of a fine-tuned model.

    model: model directory with a head, or a :class:`SequenceClassifier`;
    seqs: strings, token-id arrays, or an (N, L) array (sequences shorter than
    the longest are zero-padded at the end); method: ``ig`` | ``saliency`` |
    ``ixg``; see :class:`Attributor` for target, output and rc_average, and
    the module doc for baseline and n_steps."""
    from mambadna.components.device import resolve_device

    own = isinstance(model, SequenceClassifier) and device in (None, "auto")
    dev = None if own else resolve_device(device)  # a given model stays on its device unless told
    if not isinstance(model, SequenceClassifier):
        from mambadna.model.heads import has_head, load_classifier

        if not has_head(model):
            raise InputError(model, "attributions need a fine-tuned model with a head (this one has none)")
        model = load_classifier(model, dev or "cpu")
    attr = Attributor(model, target=target, output=output, rc_average=rc_average, device=dev)
    ids = _as_ids(seqs)
    if not ids:
        return np.zeros((0, 0, 4), np.float32)
    out = np.zeros((len(ids), max(len(s) for s in ids), 4), np.float32)
    for i, a, _, _ in iter_attributions(attr, ids, method, n_steps, baseline, batch_size):
        out[i, : len(a)] = a
    return out
