"""Scoring variants and sequences with a model: ``classify(cfg)``.

Variants (``vcf`` + ``reference``): for every record and ALT allele, the
reference and alternative windows of :func:`mambadna.io.vcf.iter_variant_windows`
are scored in batches, streaming (memory does not grow with the number of
variants). One TSV row per scored allele:

* with a fine-tuned classifier (model dir with a ``head``): ``p_ref``,
  ``p_alt`` and ``diff = p_alt - p_ref`` for the positive class (binary), or
  per class ``p_ref_<c>``, ``p_alt_<c>``, ``diff_<c>``;
* zero-shot (no head, or ``llr=True``): ``llr`` = log P(alt) − log P(ref).
  Masked-LM (bidirectional) models: the masked marginal: the allele's
  positions are masked in the window and the log-probabilities (over A, C, G,
  T) of the alt bases in the alt window minus those of the ref bases in the
  ref window are summed. For SNVs and MNVs both masked windows are the same
  sequence, so this is exactly the score of the ref context with the variant
  positions masked. Causal models: next-token log-likelihood of the whole alt
  window minus that of the ref window.
* always: ``cosine_distance`` = 1 − cos(pooled ref embedding, pooled alt
  embedding).

Skipped alleles (symbolic, breakends, ``*``, REF mismatches with
``skip_ref_mismatch``) are counted and logged in one line.
``vcf_out`` writes the input VCF with the scores as INFO fields (Number=A,
declared in the header), bgzip-compressed and tabix-indexed.

Sequences without a VCF (``fasta``, ``bed`` + ``reference``, or ``bam``
reads): one row per sequence with class probabilities (classifier), or
zero-shot the per-base log-likelihood (causal: next-token; masked-LM: a
pseudo-log-likelihood with every 8th position masked in 8 passes).

All outputs are written atomically; on any error no output file is left.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from mambadna.components.checkpoint import load_model
from mambadna.components.device import resolve_device
from mambadna.errors import InputError
from mambadna.model.heads import HeadConfig, SequenceClassifier, has_head, iter_length_groups, load_classifier
from mambadna.io.files import atomic_path
from mambadna.model.encoder import MambaDNA
from mambadna.inference.pooling import normalize_pool
from mambadna.tokenizer import A, C, G, MASK, T, TokenizationError, encode

log = logging.getLogger("mambadna")

_NUC = torch.tensor([A, C, G, T])
# token id -> column in the ACGT log-prob table (-1: not a nucleotide)
_NUC_COL = torch.full((16,), -1, dtype=torch.long)
for _j, _t in enumerate((A, C, G, T)):
    _NUC_COL[_t] = _j
PLL_STRIDE = 8


@dataclass
class ClassifyConfig:
    """Everything ``mambadna classify`` needs.

    model: model directory (fine-tuned classifier or pretrained LM).
    out: output TSV. Exactly one input: vcf (+ reference), fasta, bed
    (+ reference) or bam (optional region, min_mapq; reference for CRAM).
    vcf_out: annotated VCF (.vcf.gz, bgzip + tabix). window: bases per
    variant window. batch_size: alleles (or sequences) per forward pass.
    pooling: embedding pooling for cosine distance (default: the head's, else
    mean). llr: compute the zero-shot LLR (default: when the model has no
    head). rc_average: average classifier probabilities over x and RC(x)
    (default: the head's setting). max_records: stop after this many VCF
    records (or sequences).
    """

    model: str
    out: str
    vcf: Optional[str] = None
    reference: Optional[str] = None
    fasta: Optional[str] = None
    bed: Optional[str] = None
    bam: Optional[str] = None
    region: Optional[str] = None
    min_mapq: int = 0
    vcf_out: Optional[str] = None
    window: int = 1024
    skip_ref_mismatch: bool = False
    batch_size: int = 32
    device: str = "auto"
    pooling: Optional[str] = None
    center_width: int = 64
    layer: int = -1
    llr: Optional[bool] = None
    rc_average: Optional[bool] = None
    max_records: Optional[int] = None
    progress: bool = True

    def __post_init__(self) -> None:
        given = [k for k in ("vcf", "fasta", "bed", "bam") if getattr(self, k) is not None]
        if len(given) != 1:
            raise InputError(None, "give exactly one input: --vcf, --fasta, --bed or --bam"
                                   + (f" (got {', '.join('--' + g for g in given)})" if given else ""))
        if (self.vcf or self.bed) and not self.reference:
            raise InputError(self.vcf or self.bed, "needs --reference (the genome FASTA)")
        if self.vcf_out and not self.vcf:
            raise InputError(None, "--vcf-out needs a --vcf input")
        if self.vcf_out and not str(self.vcf_out).endswith(".gz"):
            raise InputError(self.vcf_out, "--vcf-out must end with .vcf.gz (bgzip-compressed, tabix-indexed)")
        if self.window < 1:
            raise InputError(None, f"--window must be >= 1, got {self.window}")
        if self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        if self.pooling is not None:
            self.pooling = normalize_pool(self.pooling, pooled_only=True)
        if self.max_records is not None and self.max_records < 1:
            raise InputError(None, f"--max-records must be >= 1, got {self.max_records}")


# --------------------------------------------------------------------------- scoring core
class Scorer:
    """Holds the model and computes per-batch scores (all on one device).

    Methods take equal-length token ids (batch, L) int64 tensors.
    """

    def __init__(self, model_dir: str, device: torch.device, pooling: Optional[str] = None,
                 center_width: int = 64, layer: int = -1, llr: Optional[bool] = None,
                 rc_average: Optional[bool] = None):
        self.device = device
        if has_head(model_dir):
            self.clf: Optional[SequenceClassifier] = load_classifier(model_dir, device)
            self.encoder: MambaDNA = self.clf.encoder
            hc = self.clf.head_cfg
            self.pool_cfg = HeadConfig(classes=["0", "1"], pooling=pooling or hc.pooling,
                                       center_width=center_width if pooling else hc.center_width,
                                       layer=layer if pooling else hc.layer, hidden=[])
            self.rc_average = hc.rc_average if rc_average is None else rc_average
        else:
            self.clf = None
            self.encoder = load_model(model_dir, device)
            self.pool_cfg = HeadConfig(classes=["0", "1"], pooling=pooling or "mean",
                                       center_width=center_width, layer=layer, hidden=[])
            self.rc_average = bool(rc_average)
        self.encoder.eval()
        self.featurizer = SequenceClassifier(self.encoder, self.pool_cfg).to(device).eval()
        self.do_llr = (self.clf is None) if llr is None else llr
        self.causal = not self.encoder.config.bidirectional

    @property
    def classes(self) -> List[str]:
        return [] if self.clf is None else list(self.clf.head_cfg.classes)

    @property
    def task(self) -> Optional[str]:
        return None if self.clf is None else self.clf.head_cfg.task

    @torch.no_grad()
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings (batch, d) fp32."""
        return self.featurizer.features(ids).float()

    @torch.no_grad()
    def proba(self, ids: torch.Tensor) -> torch.Tensor:
        """Classifier probabilities (batch, n_classes) (RC-averaged if set)."""
        return self.clf.predict_batch(ids, rc_average=self.rc_average).float()

    @torch.no_grad()
    def nuc_logprobs(self, ids: torch.Tensor) -> torch.Tensor:
        """log P over A, C, G, T at every position: (batch, L, 4) fp32 (logits
        restricted to the four nucleotides and renormalised)."""
        logits = self.encoder(ids).float()
        return torch.log_softmax(logits[..., _NUC.to(ids.device)], dim=-1)

    @torch.no_grad()
    def llr_variants(self, ref: torch.Tensor, alt: torch.Tensor, var_start: Sequence[int],
                     ref_len: Sequence[int], alt_len: Sequence[int]) -> torch.Tensor:
        """Zero-shot log P(alt) − log P(ref) per allele: (batch,) fp32.

        ref, alt: (batch, W) windows; the REF allele at ref[i, s:s+ref_len[i]],
        the ALT allele at alt[i, s:s+alt_len[i]] (clipped to W).
        """
        if self.causal:
            return self._window_loglik(alt) - self._window_loglik(ref)
        b, W = ref.shape
        dev = ref.device
        pos = torch.arange(W, device=dev)[None]
        s = torch.as_tensor(list(var_start), device=dev)[:, None]
        rl = torch.as_tensor(list(ref_len), device=dev)[:, None]
        al = torch.as_tensor(list(alt_len), device=dev)[:, None]
        m_ref = (pos >= s) & (pos < s + rl)
        m_alt = (pos >= s) & (pos < s + al)
        same = (rl == al)[:, 0]  # SNV/MNV: the masked windows are identical
        x_ref = ref.masked_fill(m_ref, MASK)
        lp_ref = self.nuc_logprobs(x_ref)
        out = self._allele_logp(lp_ref, alt, m_alt) - self._allele_logp(lp_ref, ref, m_ref)
        idx = torch.nonzero(~same).flatten()
        if len(idx):
            x_alt = alt[idx].masked_fill(m_alt[idx], MASK)
            lp_alt = self.nuc_logprobs(x_alt)
            out[idx] = self._allele_logp(lp_alt, alt[idx], m_alt[idx]) - self._allele_logp(lp_ref[idx], ref[idx], m_ref[idx])
        return out

    @staticmethod
    def _allele_logp(lp: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Sum over masked positions of log P(ids) (N counts as log 1/4)."""
        col = _NUC_COL.to(ids.device)[ids.long().clamp(max=15)]
        val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
        val = torch.where(col >= 0, val, torch.full_like(val, math.log(0.25)))
        return (val * mask).sum(-1)

    @torch.no_grad()
    def _window_loglik(self, ids: torch.Tensor) -> torch.Tensor:
        """Causal: sum_t log P(x_t | x_<t) over nucleotide targets: (batch,)."""
        lp = self.nuc_logprobs(ids)[:, :-1]
        tgt = ids[:, 1:]
        col = _NUC_COL.to(ids.device)[tgt.long().clamp(max=15)]
        val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
        return (val * (col >= 0)).sum(-1)

    @torch.no_grad()
    def loglik_per_base(self, ids: torch.Tensor) -> torch.Tensor:
        """Zero-shot sequence score (batch,): causal mean next-token
        log-likelihood; masked-LM pseudo-log-likelihood with every
        PLL_STRIDE-th position masked per pass (PLL_STRIDE passes)."""
        b, L = ids.shape
        col = _NUC_COL.to(ids.device)[ids.long().clamp(max=15)]
        if self.causal:
            n = (col[:, 1:] >= 0).sum(-1).clamp(min=1)
            return self._window_loglik(ids) / n
        total = torch.zeros(b, device=ids.device)
        pos = torch.arange(L, device=ids.device)
        for o in range(min(PLL_STRIDE, L)):
            m = ((pos % PLL_STRIDE) == o)[None].expand(b, L)
            lp = self.nuc_logprobs(ids.masked_fill(m, MASK))
            val = lp.gather(-1, col.clamp(min=0)[..., None])[..., 0]
            total += (val * (m & (col >= 0))).sum(-1)
        return total / (col >= 0).sum(-1).clamp(min=1)


def _cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-12)


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _info_key(name: str) -> str:
    k = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return k if re.match(r"[A-Za-z_]", k) else "_" + k


# --------------------------------------------------------------------------- variants
def _score_columns(scorer: Scorer) -> List[str]:
    cols: List[str] = []
    if scorer.do_llr:
        cols.append("llr")
    if scorer.clf is not None:
        if scorer.task == "binary":
            cols += ["p_ref", "p_alt", "diff"]
        else:
            for c in scorer.classes:
                cols += [f"p_ref_{c}", f"p_alt_{c}", f"diff_{c}"]
    cols.append("cosine_distance")
    return cols


def _info_fields(scorer: Scorer) -> List[Tuple[str, str, str]]:
    """(TSV column, INFO id, description) for --vcf-out."""
    f: List[Tuple[str, str, str]] = []
    if scorer.do_llr:
        how = ("next-token log-likelihood of the alt window minus the ref window" if scorer.causal
               else "masked-marginal log P(alt) - log P(ref) at the variant positions")
        f.append(("llr", "MAMBADNA_LLR", f"mambadna zero-shot {how}"))
    if scorer.clf is not None:
        if scorer.task == "binary":
            pos = scorer.classes[1]
            f += [("p_ref", "MAMBADNA_PREF", f"mambadna P({pos}) of the reference window"),
                  ("p_alt", "MAMBADNA_PALT", f"mambadna P({pos}) of the alternative window"),
                  ("diff", "MAMBADNA_DIFF", f"mambadna P_alt({pos}) - P_ref({pos})")]
        else:
            for c in scorer.classes:
                f.append((f"diff_{c}", f"MAMBADNA_DIFF_{_info_key(c)}", f"mambadna P_alt({c}) - P_ref({c})"))
    f.append(("cosine_distance", "MAMBADNA_COSDIST",
              "mambadna cosine distance between pooled ref and alt window embeddings"))
    return f


def _score_variant_batch(scorer: Scorer, batch) -> List[Dict[str, float]]:
    dev = scorer.device
    ref = torch.as_tensor(np.stack([w.ref_ids for w in batch]).astype(np.int64), device=dev)
    alt = torch.as_tensor(np.stack([w.alt_ids for w in batch]).astype(np.int64), device=dev)
    res: Dict[str, np.ndarray] = {}
    if scorer.do_llr:
        res["llr"] = scorer.llr_variants(ref, alt, [w.var_start for w in batch], [w.ref_len for w in batch],
                                         [w.alt_len for w in batch]).cpu().numpy()
    if scorer.clf is not None:
        pr, pa = scorer.proba(ref).cpu().numpy(), scorer.proba(alt).cpu().numpy()
        if scorer.task == "binary":
            res["p_ref"], res["p_alt"], res["diff"] = pr[:, 1], pa[:, 1], pa[:, 1] - pr[:, 1]
        else:
            for j, c in enumerate(scorer.classes):
                res[f"p_ref_{c}"], res[f"p_alt_{c}"], res[f"diff_{c}"] = pr[:, j], pa[:, j], pa[:, j] - pr[:, j]
    res["cosine_distance"] = _cosine_distance(scorer.embed(ref), scorer.embed(alt)).cpu().numpy()
    return [{k: float(v[i]) for k, v in res.items()} for i in range(len(batch))]


class _VcfAnnotator:
    """Writes the input VCF with INFO scores, in lockstep with the scored
    windows (records are complete once a later record's window arrives)."""

    def __init__(self, vcf: str, tmp_out: Path, fields: List[Tuple[str, str, str]]):
        import pysam

        try:
            self.reader = pysam.VariantFile(vcf)
        except (ValueError, OSError) as e:
            raise InputError(vcf, f"--vcf-out needs a VCF/BCF with a header ({e})") from None
        hdr = self.reader.header
        self.fields = fields
        for _, key, desc in fields:
            if key in hdr.info:
                raise InputError(vcf, f"INFO field {key} already present; refusing to overwrite it")
            hdr.info.add(key, "A", "Float", desc)
        self.writer = pysam.VariantFile(str(tmp_out), "wz", header=hdr)
        self.it = iter(self.reader)
        self.next_index = 0
        self.pending: Dict[int, Dict[int, Dict[str, float]]] = {}

    def add(self, record_index: int, allele_index: int, scores: Dict[str, float]) -> None:
        self.pending.setdefault(record_index, {})[allele_index] = scores

    def flush(self, upto: Optional[int]) -> None:
        """Write records with index < ``upto`` (all remaining when None)."""
        while upto is None or self.next_index < upto:
            try:
                rec = next(self.it)
            except StopIteration:
                break
            sc = self.pending.pop(self.next_index, {})
            n_alt = len(rec.alts or ())
            if sc and n_alt:
                for col, key, _ in self.fields:
                    vals = [sc.get(ai, {}).get(col) for ai in range(1, n_alt + 1)]
                    vals = [None if v is None or not math.isfinite(v) else round(v, 6) for v in vals]
                    if any(v is not None for v in vals):
                        rec.info[key] = tuple(vals)
            self.writer.write(rec)
            self.next_index += 1

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


def _classify_vcf(cfg: ClassifyConfig, scorer: Scorer, tsv_tmp: Path, vcf_tmp: Optional[Path]) -> Dict[str, Any]:
    from mambadna.io.fasta import Genome
    from mambadna.io.vcf import VariantStats, iter_variant_windows

    genome = Genome(cfg.reference)
    stats = VariantStats()
    cols = _score_columns(scorer)
    fields = _info_fields(scorer)
    ann = _VcfAnnotator(cfg.vcf, vcf_tmp, fields) if vcf_tmp is not None else None
    n_rows = 0
    t0 = time.time()
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_records, disable=not cfg.progress, desc="classify", unit="variant",
               dynamic_ncols=True, leave=False)
    gen = iter_variant_windows(cfg.vcf, genome, window=cfg.window, skip_ref_mismatch=cfg.skip_ref_mismatch,
                               stats=stats)
    try:
        with open(tsv_tmp, "w") as fh:
            fh.write("\t".join(["contig", "pos", "id", "ref", "alt", "allele", "kind"] + cols) + "\n")
            batch: list = []

            def run(batch):
                nonlocal n_rows
                for w, sc in zip(batch, _score_variant_batch(scorer, batch)):
                    fh.write("\t".join([w.contig, str(w.pos), w.id or ".", w.ref, w.alt, str(w.allele_index),
                                        w.kind] + [_fmt(sc.get(c)) for c in cols]) + "\n")
                    if ann is not None:
                        ann.add(w.record_index, w.allele_index, sc)
                n_rows += len(batch)
                bar.update(len(batch))
                if ann is not None:
                    ann.flush(batch[-1].record_index)

            for w in gen:
                if cfg.max_records is not None and w.record_index >= cfg.max_records:
                    break
                batch.append(w)
                if len(batch) >= cfg.batch_size:
                    run(batch)
                    batch = []
            if batch:
                run(batch)
    finally:
        gen.close()
        bar.close()
    if ann is not None:
        ann.flush(cfg.max_records)
        ann.close()
    if cfg.max_records is not None:  # the record that ended the loop is not scored
        stats.records = min(stats.records, cfg.max_records)
        stats.windows = n_rows
        stats.alleles = n_rows + sum(stats.skipped.values())  # alleles of the records actually read
    dt = time.time() - t0
    stats.log_summary(log)
    log.info("scored %d alleles in %.1f s (%.1f variants/s)", n_rows, dt, n_rows / max(dt, 1e-9))
    return {"rows": n_rows, "records": stats.records, "windows": n_rows,
            "skipped": dict(stats.skipped), "seconds": dt}


# --------------------------------------------------------------------------- sequences
@dataclass
class _Seq:
    name: str
    contig: str
    start: int
    end: int
    strand: str
    ids: np.ndarray


def _iter_sequences(cfg: ClassifyConfig) -> Iterator[_Seq]:
    if cfg.fasta:
        from mambadna.io.labeled import read_fasta_records

        for name, seq, _ in read_fasta_records(cfg.fasta):
            yield _Seq(name, ".", 0, len(seq), "+", encode(seq))
    elif cfg.bed:
        from mambadna.io.fasta import Genome
        from mambadna.io.bed import read_bed

        genome = Genome(cfg.reference)
        for iv in read_bed(cfg.bed, genome):
            strand = "-" if iv.strand == "-" else "+"
            ids = genome.fetch_ids(iv.contig, iv.start, iv.end, strand=strand, pad=False)
            name = iv.name if iv.name not in (None, "", ".") else f"{iv.contig}:{iv.start}-{iv.end}"
            yield _Seq(name, iv.contig, iv.start, iv.end, iv.strand, ids)
    else:
        from mambadna.io.bam import iter_reads

        for r in iter_reads(cfg.bam, region=cfg.region, reference=cfg.reference, min_mapq=cfg.min_mapq):
            try:
                ids = encode(r.sequence, name=r.name, lenient=False)
            except TokenizationError as e:
                raise InputError(cfg.bam, str(e)) from None
            yield _Seq(r.name, r.contig or "*", r.start, r.end, r.strand, ids)


def _classify_sequences(cfg: ClassifyConfig, scorer: Scorer, tsv_tmp: Path) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    if scorer.clf is not None:
        cols = [f"p_{c}" for c in scorer.classes] + ["prediction"]
    else:
        cols = ["loglik_per_base"]
    n = 0
    t0 = time.time()
    bar = tqdm(total=cfg.max_records, disable=not cfg.progress, desc="classify", unit="seq",
               dynamic_ncols=True, leave=False)

    def run(batch: List[_Seq], fh):
        rows: List[Optional[List[str]]] = [None] * len(batch)
        for sel, ids in iter_length_groups([s.ids for s in batch], cfg.batch_size):
            x = torch.as_tensor(ids, device=scorer.device)
            if scorer.clf is not None:
                p = scorer.proba(x).cpu().numpy()
                for k, i in enumerate(sel):
                    if scorer.task == "multilabel":
                        pred = ";".join(c for c, v in zip(scorer.classes, p[k]) if v >= 0.5) or "."
                    elif scorer.task == "binary":
                        pred = scorer.classes[int(p[k, 1] >= 0.5)]
                    else:
                        pred = scorer.classes[int(p[k].argmax())]
                    rows[i] = [_fmt(float(v)) for v in p[k]] + [pred]
            else:
                ll = scorer.loglik_per_base(x).cpu().numpy() if ids.shape[1] else np.full(len(sel), np.nan)
                for k, i in enumerate(sel):
                    rows[i] = [_fmt(float(ll[k]))]
        for s, r in zip(batch, rows):
            fh.write("\t".join([s.name, s.contig, str(s.start), str(s.end), s.strand, str(len(s.ids))] + r) + "\n")
        bar.update(len(batch))

    try:
        with open(tsv_tmp, "w") as fh:
            fh.write("\t".join(["name", "contig", "start", "end", "strand", "length"] + cols) + "\n")
            batch: List[_Seq] = []
            for s in _iter_sequences(cfg):
                if cfg.max_records is not None and n >= cfg.max_records:
                    break
                batch.append(s)
                n += 1
                if len(batch) >= cfg.batch_size:
                    run(batch, fh)
                    batch = []
            if batch:
                run(batch, fh)
    finally:
        bar.close()
    if n == 0:
        src = cfg.fasta or cfg.bed or cfg.bam
        raise InputError(src, "no sequences to score" + (" (no reads pass the filters)" if cfg.bam else ""))
    dt = time.time() - t0
    log.info("scored %d sequences in %.1f s (%.1f sequences/s)", n, dt, n / max(dt, 1e-9))
    return {"rows": n, "seconds": dt}


# --------------------------------------------------------------------------- entry point
def classify(cfg: ClassifyConfig) -> Dict[str, Any]:
    """Score variants (VCF) or sequences (FASTA/BED/BAM) and write ``cfg.out``
    (TSV) and optionally ``cfg.vcf_out``; see the module doc. Returns a summary
    dict (rows written, records, skipped counts by reason, seconds)."""

    device = resolve_device(cfg.device)
    scorer = Scorer(cfg.model, device, pooling=cfg.pooling, center_width=cfg.center_width, layer=cfg.layer,
                    llr=cfg.llr, rc_average=cfg.rc_average)
    if cfg.vcf_out and os.path.abspath(cfg.vcf_out) == os.path.abspath(cfg.vcf):
        raise InputError(cfg.vcf_out, "--vcf-out would overwrite the input VCF")
    with contextlib.ExitStack() as stack:
        tsv_tmp = stack.enter_context(atomic_path(cfg.out))
        if cfg.vcf is None:
            summary = _classify_sequences(cfg, scorer, tsv_tmp)
        elif cfg.vcf_out is None:
            summary = _classify_vcf(cfg, scorer, tsv_tmp, None)
        else:
            vcf_tmp = stack.enter_context(atomic_path(cfg.vcf_out, suffix=".vcf.gz"))
            tbi_tmp = Path(str(vcf_tmp) + ".tbi")
            try:
                summary = _classify_vcf(cfg, scorer, tsv_tmp, vcf_tmp)
                _tabix(vcf_tmp, cfg.vcf_out)
                publish_mode(vcf_tmp)
                publish_mode(tbi_tmp)
                os.replace(tbi_tmp, str(cfg.vcf_out) + ".tbi")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tbi_tmp.unlink()
        publish_mode(tsv_tmp)
        return summary


def publish_mode(path: Path, mode: int = 0o644) -> None:
    """Give a temporary output (mkstemp/mkdtemp: 0600/0700) the usual
    ``mode & ~umask`` before it is renamed into place."""
    um = os.umask(0)
    os.umask(um)
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~um)


def _tabix(path: Path, final: str) -> None:
    import pysam

    try:
        pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True)
    except (OSError, ValueError) as e:
        raise InputError(final, f"cannot tabix-index the annotated VCF (is the input sorted by position?): {e}") from None
