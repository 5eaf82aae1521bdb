"""Scores over the inference engine: zero-shot log-likelihood ratios, classifier
probabilities and embedding distances, for sequences and for variant windows.

Variant scoring does each forward once (:class:`VariantScorer`):

* masked-marginal LLR (bidirectional models): one forward of the reference
  window with the REF allele masked per *site*, shared by every ALT allele of
  the site whose masked window is the same (SNVs, MNVs); an indel adds one
  forward of its own masked ALT window;
* next-token LLR (causal models): one forward of the reference window per site
  plus one per ALT allele;
* embeddings (cosine distance, classifier): one forward of the reference window
  per site, one per ALT allele; the classifier and the cosine distance share it
  when they read the same layer.

Only the forwards of the requested scores run. With ``rc_llr`` every zero-shot
forward runs on the reverse-complement view too and the two scores are averaged.
Indel LLRs are per base (mean log-probability of the ALT bases minus that of
the REF bases), so that a long deletion does not rank first by its length
alone; SNVs are unaffected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mambadna.components.device import constant_on
from mambadna.errors import InputError
from mambadna.inference.engine import Embedder, prefetch, to_host_async
from mambadna.model.encoder import MambaDNA
from mambadna.model.heads import SequenceClassifier, pool_features
from mambadna.tokenizer import A, C, G, MASK, T, reverse_complement

Tensor = torch.Tensor
SCORES = ("llr", "cosine", "classifier")
PLL_STRIDE = 8

_NUC = torch.tensor([A, C, G, T])
_NUC_COL = torch.full((16,), -1, dtype=torch.long)  # token id -> column of A, C, G, T (-1: not a base)
for _j, _t in enumerate((A, C, G, T)):
    _NUC_COL[_t] = _j
def _host_to(dev: torch.device, arr: np.ndarray) -> Tensor:
    """A host array on ``dev`` without waiting for the device (pinned, asynchronous on CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if dev.type == "cuda":
        return t.pin_memory().to(dev, non_blocking=True)
    return t


def parse_scores(spec: Optional[str], has_head: bool) -> Tuple[str, ...]:
    """``"llr,cosine"`` -> ("llr", "cosine"). None: the classifier when the
    model has a head, else the LLR; the cosine distance in both cases."""
    if spec is None:
        return ("classifier", "cosine") if has_head else ("llr", "cosine")
    names = tuple(dict.fromkeys(s.strip().lower() for s in str(spec).split(",") if s.strip()))
    bad = [n for n in names if n not in SCORES]
    if bad or not names:
        raise InputError(None, f"--scores takes a comma-separated subset of {', '.join(SCORES)}, got {spec!r}")
    if "classifier" in names and not has_head:
        raise InputError(None, "--scores classifier needs a fine-tuned model (this one has no head)")
    return names


def allele_logp(lp: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
    """Sum over masked positions of log P(ids) (an N counts as log 1/4).
    lp: (batch, L, 4) log-probabilities over A, C, G, T; ids, mask: (batch, L)."""
    col = constant_on(_NUC_COL, ids.device)[ids.long().clamp(max=15)]
    val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
    val = torch.where(col >= 0, val, torch.full_like(val, math.log(0.25)))
    return (val * mask).sum(-1)


def _ids_on(dev: torch.device, arrs: List[np.ndarray]) -> Tensor:
    """Equal-length token id arrays stacked as a (n, L) int64 tensor on ``dev``.
    They travel in their own dtype (uint8 ids: an eighth of the int64 bytes)
    and widen on the device; to a GPU from a pinned buffer (asynchronous)."""
    if dev.type == "cuda":
        a0 = arrs[0]
        buf = torch.empty((len(arrs), len(a0)), dtype=torch.from_numpy(np.empty(0, a0.dtype)).dtype,
                          pin_memory=True)
        try:
            np.stack(arrs, out=buf.numpy(), casting="no")
        except (TypeError, ValueError):  # mixed dtypes or lengths
            buf = torch.from_numpy(np.stack(arrs))
        return buf.to(dev, non_blocking=True).long()
    return torch.from_numpy(np.stack(arrs)).long()


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-12)


class Scorer:
    """Device-level scores of equal-length token batches, all through one
    :class:`~mambadna.inference.engine.Embedder` (precision, device).

    encoder: the language model; clf: a fine-tuned classifier on it (or None);
    pooling / center_width / layer: the embedding used for cosine distances.
    Methods take (batch, L) int64 tensors on the device.
    """

    def __init__(self, encoder: MambaDNA, clf: Optional[SequenceClassifier], device: torch.device,
                 pooling: str = "mean", center_width: int = 64, layer: int = -1, precision: str = "fp32",
                 batch_size: Optional[int] = None, max_tokens: Optional[int] = None):
        self.encoder = encoder.eval()
        self.clf = clf.eval() if clf is not None else None
        self.device = device
        self.engine = Embedder(encoder, device=device, pool=None, precision=precision,
                               batch_size=batch_size, max_tokens=max_tokens)
        self.pooling, self.center_width, self.layer = pooling, center_width, layer
        self.causal = not encoder.config.bidirectional
        self.rc_equivariant = bool(encoder.config.rc_equivariant)

    @property
    def classes(self) -> List[str]:
        return [] if self.clf is None else list(self.clf.head_cfg.classes)

    @property
    def task(self) -> Optional[str]:
        return None if self.clf is None else self.clf.head_cfg.task

    # -- features ----------------------------------------------------------
    def _pooled(self, h: Tensor, pooling: str, center_width: int) -> Tensor:
        return pool_features(h, pooling, center_width, self.rc_equivariant)

    @torch.no_grad()
    def embed(self, ids: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """Pooled embeddings (batch, d) fp32 (``h``: hidden states of ``layer`` if known)."""
        if h is None:
            h = self.engine.hidden(ids, self.layer)
        return self._pooled(h, self.pooling, self.center_width).float()

    @torch.no_grad()
    def head_proba(self, ids: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """Classifier probabilities (batch, n_classes) of x (no RC averaging)."""
        hc = self.clf.head_cfg
        if h is None:
            h = self.engine.hidden(ids, hc.layer)
        f = self._pooled(h, hc.pooling, hc.center_width)
        return self.clf.probabilities(self.clf.head(f.to(self.clf.head[-1].weight.dtype)).float())

    @torch.no_grad()
    def proba(self, ids: Tensor, rc_average: bool = False) -> Tensor:
        """Classifier probabilities, averaged with those of RC(x) when ``rc_average``."""
        p = self.head_proba(ids)
        if rc_average and not self.rc_equivariant:
            p = 0.5 * (p + self.head_proba(reverse_complement(ids)))
        return p

    # -- zero-shot ---------------------------------------------------------
    @torch.no_grad()
    def nuc_logprobs(self, ids: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """log P over A, C, G, T at every position: (batch, L, 4) fp32."""
        if h is None:
            h = self.engine.hidden(ids, -1)
        logits = self.encoder.lm_logits(h).float()
        return torch.log_softmax(logits[..., constant_on(_NUC, ids.device)], dim=-1)

    @torch.no_grad()
    def window_loglik(self, ids: Tensor, h: Optional[Tensor] = None) -> Tensor:
        """Causal: sum_t log P(x_t | x_<t) over nucleotide targets: (batch,)."""
        lp = self.nuc_logprobs(ids, h)[:, :-1]
        col = constant_on(_NUC_COL, ids.device)[ids[:, 1:].long().clamp(max=15)]
        val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
        return (val * (col >= 0)).sum(-1)

    @torch.no_grad()
    def loglik_per_base(self, ids: Tensor) -> Tensor:
        """Zero-shot sequence score (batch,): causal mean next-token
        log-likelihood; masked-LM pseudo-log-likelihood with every
        PLL_STRIDE-th position masked per pass (PLL_STRIDE passes)."""
        b, L = ids.shape
        col = constant_on(_NUC_COL, ids.device)[ids.long().clamp(max=15)]
        if self.causal:
            return self.window_loglik(ids) / (col[:, 1:] >= 0).sum(-1).clamp(min=1)
        total = torch.zeros(b, device=ids.device)
        pos = torch.arange(L, device=ids.device)
        for o in range(min(PLL_STRIDE, L)):
            m = ((pos % PLL_STRIDE) == o)[None].expand(b, L)
            lp = self.nuc_logprobs(ids.masked_fill(m, MASK))
            val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
            total += (val * (m & (col >= 0))).sum(-1)
        return total / (col >= 0).sum(-1).clamp(min=1)


# --------------------------------------------------------------------------- variants
@dataclass
class _Site:
    """The ALT alleles of one VCF record (they share the reference window)."""

    windows: list

    @property
    def ref(self) -> np.ndarray:
        return self.windows[0].ref_ids


def iter_sites(windows: Iterable) -> Iterator[_Site]:
    """Group consecutive variant windows of one record into sites."""
    cur: List = []
    for w in windows:
        if cur and (w.record_index != cur[0].record_index or w.ref_ids is not cur[0].ref_ids):
            yield _Site(cur)
            cur = []
        cur.append(w)
    if cur:
        yield _Site(cur)


class VariantScorer:
    """Scores ALT alleles of variant windows (:class:`mambadna.io.vcf.VariantWindow`).

    scores: subset of :data:`SCORES`; rc_llr: average zero-shot scores over
    both strands; rc_classifier: average classifier probabilities over both
    strands; batch_windows: forward windows per device batch and per scoring
    group (a group holds that many encoder forwards, see :meth:`_forwards`;
    default: the engine's token budget / window length).
    """

    def __init__(self, scorer: Scorer, scores: Sequence[str], rc_llr: bool = False,
                 rc_classifier: bool = False, batch_windows: Optional[int] = None):
        self.s = scorer
        self.scores = tuple(scores)
        self.rc_llr = bool(rc_llr)
        self.rc_classifier = bool(rc_classifier) and not scorer.rc_equivariant
        self.batch_windows = batch_windows

    def columns(self) -> List[str]:
        cols: List[str] = []
        if "llr" in self.scores:
            cols.append("llr")
        if "classifier" in self.scores:
            if self.s.task == "binary":
                cols += ["p_ref", "p_alt", "diff"]
            else:
                for c in self.s.classes:
                    cols += [f"p_ref_{c}", f"p_alt_{c}", f"diff_{c}"]
        if "cosine" in self.scores:
            cols.append("cosine_distance")
        return cols

    # -- forwards in device batches -----------------------------------------
    def _batched(self, ids: Tensor, fn) -> Tensor:
        n = self.batch_windows or max(1, min(self.s.engine.batch_size * 4,
                                             self.s.engine.max_tokens // max(1, ids.shape[1])))
        outs = [fn(ids[i:i + n]) for i in range(0, ids.shape[0], n)]
        if len(outs) == 1:
            return outs[0]
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return torch.cat(outs)

    def _masked_llr(self, ref: Tensor, alt: Tensor, m_ref: Tensor, m_alt: Tensor,
                    site_of: Tensor, indel: np.ndarray) -> Tensor:
        """Masked-marginal LLR per allele. ref: (S, W) site windows; alt: (N, W)
        allele windows; m_ref (N, W) / m_alt (N, W) allele masks; site_of (N,);
        indel: host indices of the alleles whose length differs from REF's."""
        s = self.s
        ref_a = ref[site_of]
        # one masked reference forward per site (all its equal-length alleles share it)
        m_site = torch.zeros_like(ref, dtype=torch.bool)
        m_site[site_of] = m_ref
        lp_ref = self._batched(ref.masked_fill(m_site, MASK), s.nuc_logprobs)[site_of]
        n_ref = m_ref.sum(-1).clamp(min=1)
        n_alt = m_alt.sum(-1).clamp(min=1)
        out = allele_logp(lp_ref, alt, m_alt) - allele_logp(lp_ref, ref_a, m_ref)
        if len(indel):  # known on the host: no wait for the forward just queued
            idx = _host_to(ref.device, indel)
            lp_alt = self._batched(alt[idx].masked_fill(m_alt[idx], MASK), s.nuc_logprobs)
            out[idx] = (allele_logp(lp_alt, alt[idx], m_alt[idx]) / n_alt[idx]
                        - allele_logp(lp_ref[idx], ref_a[idx], m_ref[idx]) / n_ref[idx])
        return out

    def _llr(self, ref, alt, m_ref, m_alt, site_of, indel) -> Tensor:
        if self.s.causal:
            ll_ref = self._batched(ref, self.s.window_loglik)[site_of]
            return self._batched(alt, self.s.window_loglik) - ll_ref
        return self._masked_llr(ref, alt, m_ref, m_alt, site_of, indel)

    def _score_group(self, sites: List[_Site]) -> Tensor:
        """(n_alleles, n_columns) scores on the device for a group of sites."""
        s = self.s
        dev = s.device
        wins = [w for site in sites for w in site.windows]
        site_of = _host_to(dev, np.repeat(np.arange(len(sites), dtype=np.int64),
                                          [len(site.windows) for site in sites]))
        ref = _ids_on(dev, [site.ref for site in sites])
        alt = _ids_on(dev, [w.alt_ids for w in wins])
        W = ref.shape[1]
        pos = torch.arange(W, device=dev)[None]
        meta_np = np.array([(w.var_start, w.ref_len, w.alt_len) for w in wins], dtype=np.int64).reshape(len(wins), 3)
        meta = _host_to(dev, meta_np)
        st, rl, al = meta[:, 0:1], meta[:, 1:2], meta[:, 2:3]
        m_ref = (pos >= st) & (pos < st + rl)
        m_alt = (pos >= st) & (pos < st + al)
        indel = np.flatnonzero(meta_np[:, 1] != meta_np[:, 2])
        cols: List[Tensor] = []
        if "llr" in self.scores:
            llr = self._llr(ref, alt, m_ref, m_alt, site_of, indel)
            if self.rc_llr:
                rc = reverse_complement
                llr = 0.5 * (llr + self._llr(rc(ref), rc(alt), m_ref.flip(-1), m_alt.flip(-1), site_of, indel))
            cols.append(llr[:, None])
        if "classifier" in self.scores or "cosine" in self.scores:
            shared = "classifier" in self.scores and s.clf.head_cfg.layer == s.layer
            h_ref = self._batched(ref, lambda x: self._features(x, shared))
            h_alt = self._batched(alt, lambda x: self._features(x, shared))
            if "classifier" in self.scores:
                pr, pa = self._proba(ref, h_ref if shared else None)[site_of], self._proba(alt, h_alt if shared else None)
                if s.task == "binary":
                    cols += [pr[:, 1:2], pa[:, 1:2], (pa - pr)[:, 1:2]]
                else:
                    for j in range(pr.shape[1]):
                        cols += [pr[:, j:j + 1], pa[:, j:j + 1], (pa - pr)[:, j:j + 1]]
            if "cosine" in self.scores:
                e_ref, e_alt = h_ref["emb"][site_of], h_alt["emb"]
                cols.append(cosine_distance(e_ref, e_alt)[:, None])
        return torch.cat([c.float() for c in cols], dim=1)

    def _features(self, ids: Tensor, shared: bool) -> Dict[str, Tensor]:
        s = self.s
        h = s.engine.hidden(ids, s.layer)
        out = {"emb": s.embed(ids, h)}
        if shared:
            out["proba"] = s.head_proba(ids, h)
        return out

    def _proba(self, ids: Tensor, feats: Optional[Dict[str, Tensor]]) -> Tensor:
        s = self.s
        p = feats["proba"] if feats is not None else self._batched(ids, s.head_proba)
        if self.rc_classifier:
            p = 0.5 * (p + self._batched(reverse_complement(ids), s.head_proba))
        return p

    def _forwards(self, ws: List) -> int:
        """Encoder forwards that scoring one record's windows costs: a group
        holds a token budget of forwards, not of alleles (with the LLR alone an
        SNV site costs one masked forward for its three alleles)."""
        if not ws:
            return 0
        n = 0
        if "llr" in self.scores:
            if self.s.causal:
                n += 1 + len(ws)
            else:
                n += 1 + sum(1 for w in ws if w.ref_len != w.alt_len)
            n *= 2 if self.rc_llr else 1
        if "classifier" in self.scores or "cosine" in self.scores:
            n += (1 + len(ws)) * (2 if self.rc_classifier else 1)
        return n

    # -- stream ------------------------------------------------------------
    def score_records(self, records: Iterable[Tuple[object, List]]) -> Iterator[Tuple[object, List, np.ndarray]]:
        """Score ``(record, windows)`` pairs (one VCF record and the windows of
        its ALT alleles, as :func:`mambadna.io.vcf.iter_variant_records` gives);
        yield ``(record, windows, scores (len(windows), n_columns) float64)`` in
        input order, records without windows included. Input preparation runs
        in a background thread; device results come back asynchronously, one
        group behind the compute (no host synchronisation per batch)."""
        pending: Optional[Tuple[List, Optional[Tensor], Optional["torch.cuda.Event"]]] = None
        group: List[Tuple[object, List]] = []
        n, limit = 0, self.batch_windows

        def launch(items):
            sites = [_Site(ws) for _, ws in items if ws]
            if not sites:
                return items, None, None
            return (items, *to_host_async(self._score_group(sites)))

        def drain(p):
            items, host, ev = p
            if ev is not None:
                ev.synchronize()
            arr = host.double().numpy() if host is not None else np.zeros((0, 0))
            k = 0
            for rec, ws in items:
                yield rec, ws, arr[k:k + len(ws)]
                k += len(ws)

        for rec, ws in prefetch(records):
            if limit is None and ws:  # forward windows per group from the token budget
                limit = max(1, self.s.engine.max_tokens // len(ws[0].ref_ids))
            group.append((rec, ws))
            n += self._forwards(ws)
            if limit is not None and n >= limit:
                nxt = launch(group)
                if pending is not None:
                    yield from drain(pending)
                pending, group, n = nxt, [], 0
        if group:
            nxt = launch(group)
            if pending is not None:
                yield from drain(pending)
            pending = nxt
        if pending is not None:
            yield from drain(pending)

    def score(self, windows: Iterable) -> Iterator[Tuple[object, np.ndarray]]:
        """Yield ``(window, scores (n_columns,))`` per variant window, in order."""
        sites = ((None, site.windows) for site in iter_sites(windows))
        for _, ws, arr in self.score_records(sites):
            yield from zip(ws, arr)
