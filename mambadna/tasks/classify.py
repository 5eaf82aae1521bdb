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
import itertools
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.inference.pooling import normalize_pool
from mambadna.inference.scoring import Scorer, VariantScorer, parse_scores
from mambadna.io.files import atomic_path, prepare_output, publish_mode
from mambadna.io.records import Record, iter_records
from mambadna.io.vcf import tabix_index
from mambadna.model.heads import iter_length_groups, predicted_labels

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
    shard_size: Optional[int] = None  # records per shard (the unit split across torchrun ranks and resumed)

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
            pos = s.classes[1]  # a binary head's classes are [negative, positive] (finetune records which)
            what = f"{pos}, the positive class"
            f += [("p_ref", "MAMBADNA_PREF", f"mambadna P({what}) of the reference window"),
                  ("p_alt", "MAMBADNA_PALT", f"mambadna P({what}) of the alternative window"),
                  ("diff", "MAMBADNA_DIFF", f"mambadna P_alt({pos}) - P_ref({pos}) for {what}")]
        else:
            for c in s.classes:
                f.append((f"diff_{c}", f"MAMBADNA_DIFF_{_info_key(c)}", f"mambadna P_alt({c}) - P_ref({c})"))
    if "cosine" in vs.scores:
        f.append(("cosine_distance", "MAMBADNA_COSDIST",
                  "mambadna cosine distance between pooled ref and alt window embeddings"))
    return f


TSV_VARIANT_COLUMNS = ["contig", "pos", "id", "ref", "alt", "allele", "kind"]
TSV_SEQUENCE_COLUMNS = ["name", "contig", "start", "end", "strand", "length"]


def _variant_lines(cols: List[str], windows, scores) -> Tuple[List[str], Dict[int, Dict[str, float]]]:
    """TSV lines of one record's scored alleles, and its scores per ALT allele (for the annotator)."""
    lines: List[str] = []
    per_allele: Dict[int, Dict[str, float]] = {}
    for w, row in zip(windows, scores):
        sc = dict(zip(cols, map(float, row)))
        per_allele[w.allele_index] = sc
        lines.append("\t".join([w.contig, str(w.pos), w.id or ".", w.ref, w.alt, str(w.allele_index),
                                w.kind] + [_fmt(sc[c]) for c in cols]) + "\n")
    return lines, per_allele


def _stat_counts(stats) -> "Counter[str]":
    """VariantStats as one Counter (records, alleles, windows, skipped:<reason>)."""
    c = Counter({"records": stats.records, "alleles": stats.alleles, "windows": stats.windows})
    c.update({f"skipped:{k}": v for k, v in stats.skipped.items()})
    return c


# --------------------------------------------------------------------------- sequences
def _iter_sequences(cfg: ClassifyConfig) -> Iterator[Record]:
    """The sequences of --fasta, --bed (+ --reference) or --bam, through the one input adapter."""
    if cfg.fasta:
        recs = iter_records(fasta=cfg.fasta)
    elif cfg.bed:
        recs = iter_records(bed=cfg.bed, genome=cfg.reference)
    else:
        recs = iter_records(bam=cfg.bam, region=cfg.region, genome=cfg.reference, min_mapq=cfg.min_mapq)
    unplaced = "." if cfg.fasta else "*"
    for r in recs:
        if not r.contig:
            r.contig = unplaced
        yield r


def _sequence_columns(scorer: Scorer) -> List[str]:
    if scorer.clf is not None:
        return [f"p_{c}" for c in scorer.classes] + ["prediction"]
    return ["loglik_per_base"]


def _sequence_lines(scorer: Scorer, batch: List[Record], rc_average: bool, batch_size: int) -> List[str]:
    """TSV lines of one batch of sequences (scored in length groups)."""
    rows: List[Optional[List[str]]] = [None] * len(batch)
    for sel, ids in iter_length_groups([s.ids for s in batch], batch_size):
        x = torch.as_tensor(ids, device=scorer.device)
        if scorer.clf is not None:
            p = scorer.proba(x, rc_average).cpu().numpy()
            preds = predicted_labels(p, scorer.clf.head_cfg)  # the head's own decision (threshold chosen on validation)
            for k, i in enumerate(sel):
                rows[i] = [_fmt(float(v)) for v in p[k]] + [preds[k]]
        else:
            ll = scorer.loglik_per_base(x).cpu().numpy() if ids.shape[1] else np.full(len(sel), np.nan)
            for k, i in enumerate(sel):
                rows[i] = [_fmt(float(ll[k]))]
    return ["\t".join([s.name, s.contig, str(s.start), str(s.end), s.strand, str(len(s.ids))] + r) + "\n"
            for s, r in zip(batch, rows)]


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
    dict (rows written, records, skipped counts by reason, seconds).

    Under ``torchrun`` the records (VCF records whole, with all their ALT
    alleles) are split across the processes; rank 0 merges the shards into
    the same bytes as a one-process run, and an interrupted run resumes from
    its finished shards (:mod:`mambadna.components.shards`)."""
    from mambadna.components.shards import run

    return run(_ClassifyJob(cfg), cfg.device)


SEQ_SHARD_BATCHES = 64  # sequences per shard: 64 batches (unless --shard-size)
VCF_SHARD_GROUPS = 8  # VCF records per shard: 8 scoring groups of the token budget (unless --shard-size)


class _ClassifyJob:
    """:class:`mambadna.components.shards.ShardJob` of ``mambadna classify``: shard
    files are TSV lines (``.tsv``) and, with ``--vcf-out``, the annotated VCF
    records as BGZF pieces (``.vcf.bgz``) that rank 0 concatenates after the header."""

    command = "classify"

    def __init__(self, cfg: ClassifyConfig):
        self.cfg = cfg
        self.outputs = [Path(cfg.out)] + ([Path(cfg.vcf_out)] if cfg.vcf_out else [])
        self.n_shards = 0
        self.bar = None
        self.ann = None

    def check(self) -> None:
        cfg = self.cfg
        if cfg.vcf_out and os.path.abspath(cfg.vcf_out) == os.path.abspath(cfg.vcf):
            raise InputError(cfg.vcf_out, "--vcf-out would overwrite the input VCF")
        if cfg.shard_size is not None and cfg.shard_size < 1:
            raise InputError(None, f"--shard-size must be >= 1, got {cfg.shard_size}")

    def prepare_outputs(self) -> None:
        cfg = self.cfg
        ins = [cfg.model, cfg.vcf, cfg.reference, cfg.fasta, cfg.bed, cfg.bam]
        for o, flag in ((cfg.out, "--out"), (cfg.vcf_out, "--vcf-out")):
            if o:  # before any work: not an input, not someone else's file, locked against a second run
                prepare_output(o, "file", overwrite=cfg.overwrite, inputs=ins, command="classify", what=flag)

    def _shard_size(self, device) -> int:
        from mambadna.inference.engine import default_max_tokens

        cfg = self.cfg
        if cfg.shard_size:
            return int(cfg.shard_size)
        if cfg.vcf:
            return VCF_SHARD_GROUPS * (cfg.batch_size or max(1, default_max_tokens(device) // cfg.window))
        return SEQ_SHARD_BATCHES * (cfg.batch_size or 32)

    def key(self, device) -> Dict[str, Any]:
        import dataclasses

        from mambadna import __version__
        from mambadna.components.shards import file_identity, model_identity

        cfg = self.cfg
        files = ("model", "vcf", "reference", "fasta", "bed", "bam")
        skip = set(files) | {"out", "vcf_out", "progress", "device", "overwrite"}
        return {"command": "classify", "version": __version__, "device": device.type,
                "shard_size": self._shard_size(device), "vcf_out": bool(cfg.vcf_out),
                "inputs": {k: file_identity(getattr(cfg, k)) for k in files[1:]},
                "model": model_identity(cfg.model),
                "options": {k: v for k, v in dataclasses.asdict(cfg).items() if k not in skip}}

    def setup(self, device) -> None:
        from mambadna.components.distributed import is_main_process

        cfg = self.cfg
        self.device = device
        encoder, clf = _load(cfg, device)
        hc = clf.head_cfg if clf is not None else None
        pooling = cfg.pooling or (hc.pooling if hc else "mean")
        self.scorer = Scorer(encoder, clf, device, pooling=pooling,
                             center_width=cfg.center_width if (cfg.pooling or not hc) else hc.center_width,
                             layer=cfg.layer if (cfg.pooling or not hc) else hc.layer, precision=cfg.precision,
                             batch_size=cfg.batch_size)
        self.rc_classifier = (hc.rc_average if hc else False) if cfg.rc_average is None else cfg.rc_average
        if cfg.vcf is not None:
            from mambadna.io.vcf import VcfAnnotator

            scores = list(parse_scores(cfg.scores, clf is not None))
            if cfg.scores is None and cfg.llr is not None:
                if cfg.llr and "llr" not in scores:
                    scores.insert(0, "llr")
                elif not cfg.llr and "llr" in scores:
                    scores.remove("llr")
            self.vs = VariantScorer(self.scorer, scores, rc_llr=bool(cfg.rc_average),
                                    rc_classifier=self.rc_classifier, batch_windows=cfg.batch_size)
            self.cols = self.vs.columns()
            if cfg.vcf_out:
                self.ann = VcfAnnotator(cfg.vcf, None, _info_fields(self.vs))
        else:
            self.cols = _sequence_columns(self.scorer)
        self.t0 = time.time()
        if cfg.progress and is_main_process():
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="classify", unit="variant" if cfg.vcf else "seq", dynamic_ncols=True, leave=False)

    # -- reading: every rank reads the whole input; windows only for its own records
    def shards(self, own):
        from mambadna.components.shards import Cut

        cfg = self.cfg
        size = self._shard_size(self.device)
        if cfg.vcf is not None:
            cut = Cut(size)
            items = self._variant_records(lambda i: own(i // size))
        else:
            from mambadna.inference.engine import default_max_tokens

            cut = Cut(size, max_tokens=8 * default_max_tokens(self.device), length=lambda s: len(s.ids))
            items = itertools.islice(_iter_sequences(cfg), cfg.max_records)
        yield from cut.owned(items, own)
        self.n_shards = cut.count

    def _variant_records(self, mine):
        """(index, record, windows, stats of this record) in file order; records
        that are not ``mine`` come without windows (None)."""
        from mambadna.io.fasta import Genome
        from mambadna.io.vcf import VariantStats, iter_variant_records

        cfg = self.cfg
        lim = cfg.max_records
        stats = VariantStats()
        prev = _stat_counts(stats)
        for idx, rec, ws in iter_variant_records(cfg.vcf, Genome(cfg.reference), window=cfg.window,
                                                 skip_ref_mismatch=cfg.skip_ref_mismatch, stats=stats,
                                                 on_header=self.ann.attach if self.ann is not None else None,
                                                 select=lambda i: mine(i) and (lim is None or i < lim)):
            if lim is not None and idx >= lim:
                return
            if ws is None:
                yield idx, rec, None, None
                continue
            cur = _stat_counts(stats)
            yield idx, rec, ws, cur - prev
            prev = cur

    # -- one shard
    def write(self, k: int, items, sd, check) -> Tuple[List[Path], Dict[str, Any]]:
        """Shard k: its TSV lines (``.tsv``) and, with --vcf-out, its annotated
        records as BGZF blocks (``.vcf.bgz``), both streamed and written atomically."""
        from mambadna.io import bgzf

        cfg = self.cfg
        files = [sd.path(k, ".tsv")] + ([sd.path(k, ".vcf.bgz")] if self.ann is not None else [])
        with contextlib.ExitStack() as stack:
            tsv = stack.enter_context(open(stack.enter_context(atomic_path(files[0])), "wb"))
            if self.ann is not None:
                vcf = bgzf.Writer(stack.enter_context(open(stack.enter_context(atomic_path(files[1])), "wb")))
            if cfg.vcf is not None:
                counts: "Counter[str]" = Counter()
                for item in items:
                    counts += item[3]
                n_rows = 0
                for (_, rec), windows, scores in self.vs.score_records(((i, r), ws) for i, r, ws, _ in items):
                    lines, per_allele = _variant_lines(self.cols, windows, scores)
                    tsv.write("".join(lines).encode())
                    if self.ann is not None:
                        self.ann.annotate(rec, per_allele)
                        vcf.write(str(rec).encode())
                    n_rows += len(windows)
                    self._advance(len(windows))
                    check()
                if self.ann is not None:
                    vcf.close()
                meta: Dict[str, Any] = {"rows": n_rows, "counts": dict(counts)}
            else:
                bs = cfg.batch_size or 32
                for i in range(0, len(items), bs):
                    batch = items[i:i + bs]
                    tsv.write("".join(_sequence_lines(self.scorer, batch, self.rc_classifier, bs)).encode())
                    self._advance(len(batch))
                    check()
                meta = {"rows": len(items)}
        return files, meta

    def _advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    # -- rank 0: the outputs
    def merge(self, metas: List[Dict[str, Any]], sd) -> Dict[str, Any]:
        cfg = self.cfg
        n_rows = sum(int(m["rows"]) for m in metas)
        if cfg.vcf is None and n_rows == 0:
            src = cfg.fasta or cfg.bed or cfg.bam
            raise InputError(src, "no sequences to score" + (" (no reads pass the filters)" if cfg.bam else ""))
        first = TSV_VARIANT_COLUMNS if cfg.vcf is not None else TSV_SEQUENCE_COLUMNS
        header = ("\t".join(first + self.cols) + "\n").encode()
        shards = range(len(metas))
        with contextlib.ExitStack() as stack:
            tsv_tmp = stack.enter_context(atomic_path(cfg.out))
            _concat(tsv_tmp, header, [sd.path(k, ".tsv") for k in shards])
            if cfg.vcf_out:
                from mambadna.io import bgzf

                vcf_tmp = stack.enter_context(atomic_path(cfg.vcf_out, suffix=".vcf.gz"))
                tbi_tmp = Path(str(vcf_tmp) + ".tbi")
                try:
                    _concat(vcf_tmp, bgzf.compress(str(self.ann.header).encode()),
                            [sd.path(k, ".vcf.bgz") for k in shards], bgzf.EOF)
                    tabix_index(vcf_tmp, cfg.vcf_out)
                    publish_mode(vcf_tmp)
                    publish_mode(tbi_tmp)
                    os.replace(tbi_tmp, str(cfg.vcf_out) + ".tbi")
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        tbi_tmp.unlink()
            publish_mode(tsv_tmp)
        dt = time.time() - self.t0
        if cfg.vcf is None:
            log.info("scored %d sequences in %.1f s (%.1f sequences/s)", n_rows, dt, n_rows / max(dt, 1e-9))
            return {"rows": n_rows, "seconds": dt}
        from mambadna.io.vcf import VariantStats

        c: "Counter[str]" = Counter()
        for m in metas:
            c.update(m["counts"])
        stats = VariantStats(records=c["records"], alleles=c["alleles"], windows=c["windows"],
                             skipped=Counter({k.split(":", 1)[1]: v for k, v in c.items()
                                              if k.startswith("skipped:") and v}))
        stats.log_summary(log)
        log.info("scored %d alleles in %.1f s (%.1f variants/s)", n_rows, dt, n_rows / max(dt, 1e-9))
        return {"rows": n_rows, "records": stats.records, "windows": n_rows,
                "skipped": dict(stats.skipped), "seconds": dt}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _concat(dst: Path, head: bytes, parts: List[Path], tail: bytes = b"") -> None:
    with open(dst, "wb") as out:
        out.write(head)
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        out.write(tail)
