"""Scoring variants and sequences with a model: ``classify(cfg)``.

Variants (``vcf`` + ``reference``): for every record and ALT allele, the
reference and alternative windows of :func:`mambadna.io.vcf.iter_variant_windows`
are scored in batches, streaming (memory does not grow with the number of
variants). One TSV row per scored allele:

* with a fine-tuned classifier (model dir with a ``head``): ``p_ref``,
  ``p_alt`` and ``diff = p_alt - p_ref`` for the positive class (binary), or
  per class ``p_ref_<c>``, ``p_alt_<c>``, ``diff_<c>``;
* zero-shot (no head, or ``scores`` naming ``llr``): ``llr`` = log P(alt) − log P(ref).
  Masked-LM (bidirectional) models: the masked marginal: the allele's
  positions are masked in the window and the log-probabilities (over A, C, G,
  T) of the alt bases in the alt window minus those of the ref bases in the
  ref window are summed (indels: averaged per base, so that length alone does
  not rank them). For SNVs and MNVs both masked windows are the same
  sequence, so this is exactly the score of the ref context with the variant
  positions masked; one forward per site serves all its ALT alleles. Causal models: next-token log-likelihood of the whole alt
  window minus that of the ref window.
* ``cosine_distance`` = 1 − cos(pooled ref embedding, pooled alt
  embedding).

``scores`` chooses among them (default: classifier or llr, plus cosine); only
the forwards they need run (:mod:`mambadna.inference.scoring`). ``rc_average``
averages the scores over both strands (zero-shot and classifier alike).

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
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mambadna.components.device import resolve_device
from mambadna.errors import InputError
from mambadna.inference.pooling import normalize_pool
from mambadna.inference.scoring import Scorer, VariantScorer, parse_scores
from mambadna.io.files import atomic_path, prepare_output, publish_mode
from mambadna.io.vcf import tabix_index
from mambadna.model.heads import iter_length_groups
from mambadna.tokenizer import encode, encode_input

log = logging.getLogger("mambadna")


@dataclass
class ClassifyConfig:
    """Everything ``mambadna classify`` needs.

    model: model directory (fine-tuned classifier or pretrained LM).
    out: output TSV. Exactly one input: vcf (+ reference), fasta, bed
    (+ reference) or bam (optional region, min_mapq; reference for CRAM).
    vcf_out: annotated VCF (.vcf.gz, bgzip + tabix). window: bases per
    variant window. batch_size: windows (or sequences) per forward pass
    (default: the engine's token budget). precision: "fp32" or "bf16" (CUDA autocast).
    pooling: embedding pooling for cosine distance (default: the head's, else
    mean). scores: comma-separated subset of llr, cosine, classifier (default:
    classifier or llr, and cosine). llr: add (True) or drop (False) the LLR
    from the default set. rc_average: average scores over x and RC(x)
    (default: the head's setting for the classifier, off for zero-shot). max_records: stop after this many VCF
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
    batch_size: Optional[int] = None
    device: str = "auto"
    precision: str = "fp32"
    pooling: Optional[str] = None
    center_width: int = 64
    layer: int = -1
    llr: Optional[bool] = None
    scores: Optional[str] = None
    rc_average: Optional[bool] = None
    max_records: Optional[int] = None
    progress: bool = True
    overwrite: bool = False  # replace an existing --out / --vcf-out that is not an earlier classify output

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
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        if self.pooling is not None:
            self.pooling = normalize_pool(self.pooling, pooled_only=True)
        if self.max_records is not None and self.max_records < 1:
            raise InputError(None, f"--max-records must be >= 1, got {self.max_records}")


# --------------------------------------------------------------------------- variants
def _info_key(name: str) -> str:
    k = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return k if re.match(r"[A-Za-z_]", k) else "_" + k


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "NA"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _info_fields(vs: VariantScorer) -> List[Tuple[str, str, str]]:
    """(TSV column, INFO id, description) for --vcf-out."""
    s = vs.s
    f: List[Tuple[str, str, str]] = []
    rc = " (averaged over both strands)" if vs.rc_llr else ""
    if "llr" in vs.scores:
        how = ("next-token log-likelihood of the alt window minus the ref window" if s.causal
               else "masked-marginal log P(alt) - log P(ref) at the variant positions (indels: per base)")
        f.append(("llr", "MAMBADNA_LLR", f"mambadna zero-shot {how}{rc}"))
    if "classifier" in vs.scores:
        if s.task == "binary":
            pos = s.classes[1]
            f += [("p_ref", "MAMBADNA_PREF", f"mambadna P({pos}) of the reference window"),
                  ("p_alt", "MAMBADNA_PALT", f"mambadna P({pos}) of the alternative window"),
                  ("diff", "MAMBADNA_DIFF", f"mambadna P_alt({pos}) - P_ref({pos})")]
        else:
            for c in s.classes:
                f.append((f"diff_{c}", f"MAMBADNA_DIFF_{_info_key(c)}", f"mambadna P_alt({c}) - P_ref({c})"))
    if "cosine" in vs.scores:
        f.append(("cosine_distance", "MAMBADNA_COSDIST",
                  "mambadna cosine distance between pooled ref and alt window embeddings"))
    return f


def _classify_vcf(cfg: ClassifyConfig, vs: VariantScorer, tsv_tmp: Path, vcf_tmp: Optional[Path]) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    from mambadna.io.fasta import Genome
    from mambadna.io.vcf import VariantStats, VcfAnnotator, iter_variant_records

    genome = Genome(cfg.reference)
    stats = VariantStats()
    cols = vs.columns()
    ann = VcfAnnotator(cfg.vcf, vcf_tmp, _info_fields(vs)) if vcf_tmp is not None else None
    n_rows = 0
    t0 = time.time()
    bar = tqdm(total=cfg.max_records, disable=not cfg.progress, desc="classify", unit="variant",
               dynamic_ncols=True, leave=False)

    def records():
        for idx, rec, windows in iter_variant_records(cfg.vcf, genome, window=cfg.window,
                                                      skip_ref_mismatch=cfg.skip_ref_mismatch, stats=stats,
                                                      on_header=ann.attach if ann is not None else None):
            if cfg.max_records is not None and idx >= cfg.max_records:
                return
            yield rec, windows

    try:
        with open(tsv_tmp, "w") as fh:
            fh.write("\t".join(["contig", "pos", "id", "ref", "alt", "allele", "kind"] + cols) + "\n")
            for rec, windows, scores in vs.score_records(records()):
                per_allele: Dict[int, Dict[str, float]] = {}
                for w, row in zip(windows, scores):
                    sc = dict(zip(cols, map(float, row)))
                    per_allele[w.allele_index] = sc
                    fh.write("\t".join([w.contig, str(w.pos), w.id or ".", w.ref, w.alt, str(w.allele_index),
                                        w.kind] + [_fmt(sc[c]) for c in cols]) + "\n")
                if ann is not None:
                    ann.write(rec, per_allele)
                n_rows += len(windows)
                bar.update(len(windows))
    finally:
        bar.close()
        if ann is not None:
            ann.close()
    if cfg.max_records is not None:  # records past the limit are not read
        stats.records = min(stats.records, cfg.max_records)
        stats.windows = n_rows
        stats.alleles = n_rows + sum(stats.skipped.values())
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
            ids = encode_input(r.sequence, cfg.bam, name=r.name, lenient=False)
            yield _Seq(r.name, r.contig or "*", r.start, r.end, r.strand, ids)


def _classify_sequences(cfg: ClassifyConfig, scorer: Scorer, rc_average: bool, tsv_tmp: Path) -> Dict[str, Any]:
    from tqdm.auto import tqdm

    batch_size = cfg.batch_size or 32
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
        for sel, ids in iter_length_groups([s.ids for s in batch], batch_size):
            x = torch.as_tensor(ids, device=scorer.device)
            if scorer.clf is not None:
                p = scorer.proba(x, rc_average).cpu().numpy()
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
                if len(batch) >= batch_size:
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
def _load(cfg: ClassifyConfig, device: torch.device):
    """(encoder, classifier or None) from the model folder, config read once."""
    from mambadna.components.checkpoint import load_model
    from mambadna.model.heads import has_head, load_classifier

    if has_head(cfg.model):
        clf = load_classifier(cfg.model, device)
        return clf.encoder, clf
    return load_model(cfg.model, device), None


def classify(cfg: ClassifyConfig) -> Dict[str, Any]:
    """Score variants (VCF) or sequences (FASTA/BED/BAM) and write ``cfg.out``
    (TSV) and optionally ``cfg.vcf_out``; see the module doc. Returns a summary
    dict (rows written, records, skipped counts by reason, seconds)."""
    device = resolve_device(cfg.device)
    if cfg.vcf_out and os.path.abspath(cfg.vcf_out) == os.path.abspath(cfg.vcf):
        raise InputError(cfg.vcf_out, "--vcf-out would overwrite the input VCF")
    ins = [cfg.model, cfg.vcf, cfg.reference, cfg.fasta, cfg.bed, cfg.bam]
    for o, flag in ((cfg.out, "--out"), (cfg.vcf_out, "--vcf-out")):
        if o:  # before any work: not an input, not someone else's file, locked against a second run
            prepare_output(o, "file", overwrite=cfg.overwrite, inputs=ins, command="classify", what=flag)
    encoder, clf = _load(cfg, device)
    hc = clf.head_cfg if clf is not None else None
    pooling = cfg.pooling or (hc.pooling if hc else "mean")
    scorer = Scorer(encoder, clf, device, pooling=pooling,
                    center_width=cfg.center_width if (cfg.pooling or not hc) else hc.center_width,
                    layer=cfg.layer if (cfg.pooling or not hc) else hc.layer, precision=cfg.precision,
                    batch_size=cfg.batch_size)
    rc_classifier = (hc.rc_average if hc else False) if cfg.rc_average is None else cfg.rc_average
    with contextlib.ExitStack() as stack:
        tsv_tmp = stack.enter_context(atomic_path(cfg.out))
        if cfg.vcf is None:
            summary = _classify_sequences(cfg, scorer, rc_classifier, tsv_tmp)
            publish_mode(tsv_tmp)
            return summary
        scores = list(parse_scores(cfg.scores, clf is not None))
        if cfg.scores is None and cfg.llr is not None:
            if cfg.llr and "llr" not in scores:
                scores.insert(0, "llr")
            elif not cfg.llr and "llr" in scores:
                scores.remove("llr")
        vs = VariantScorer(scorer, scores, rc_llr=bool(cfg.rc_average), rc_classifier=rc_classifier,
                           batch_windows=cfg.batch_size)
        if cfg.vcf_out is None:
            summary = _classify_vcf(cfg, vs, tsv_tmp, None)
        else:
            vcf_tmp = stack.enter_context(atomic_path(cfg.vcf_out, suffix=".vcf.gz"))
            tbi_tmp = Path(str(vcf_tmp) + ".tbi")
            try:
                summary = _classify_vcf(cfg, vs, tsv_tmp, vcf_tmp)
                tabix_index(vcf_tmp, cfg.vcf_out)
                publish_mode(vcf_tmp)
                publish_mode(tbi_tmp)
                os.replace(tbi_tmp, str(cfg.vcf_out) + ".tbi")
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tbi_tmp.unlink()
        publish_mode(tsv_tmp)
        return summary
