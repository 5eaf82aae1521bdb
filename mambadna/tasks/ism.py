"""``mambadna ism``: saturation mutagenesis of genomic regions, ``ism(cfg)``.

Every substitution at every A/C/G/T position of the regions (``--region`` or a
BED), scored by :mod:`mambadna.inference.ism` exactly as ``classify`` scores
that SNV in that window: zero-shot ``llr`` or, with a fine-tuned head,
``classifier`` (Δ probability of the target class). Outputs, all atomic (on any
error nothing is left behind):

* TSV ``contig pos ref alt score`` (1-based pos, one row per alternative base),
  after ``#`` comment lines naming the model, the score and the track;
* ``bigwig``: the per-position mean of the three scores (``mean_llr`` /
  ``mean_diff``), one value per scored base (pyBigWig; opens in IGV / UCSC);
* ``logo``: PNG of the first region (genome order; at most
  :data:`~mambadna.inference.logos.LOGO_MAX_BP` bases), reference bases scaled by importance
  (minus the mean score) above a heatmap of the substitution scores.

Every check on the inputs (regions past a contig end, regions of N only, a
Δ probability asked of a model without a head, an output that cannot be
written, a logo region too long to draw) runs before any scoring.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from mambadna.errors import InputError
from mambadna.inference.ism import (
    ISM_SCORES,
    check_regions,
    ism_matrix,
    iter_ism,
    resolve_regions,
    score_column,
    variant_scorer,
)
from mambadna.inference.logos import LOGO_MAX_BP, ism_figure, save_png
from mambadna.io.files import (
    atomic_path,
    prepare_output,
    publish_mode,
    release_output_locks,
)

log = logging.getLogger("mambadna")

BIGWIG_FLUSH = 1 << 16  # entries buffered before pyBigWig.addEntries


@dataclass
class IsmConfig:
    """Everything ``mambadna ism`` needs.

    model: model directory; reference: genome FASTA; region: one or more
    ``CONTIG:START-END`` (1-based inclusive) or bed: a BED file (exactly one
    of the two); out: TSV; bigwig / logo: optional outputs; window: bases per
    variant window (as ``classify --window``); scores: ``llr`` or
    ``classifier`` (default: classifier with a head, else llr); rc_average:
    average over both strands (zero-shot: off by default; classifier: the
    head's setting by default); target: class whose Δ probability is scored
    (default: the positive class of a binary head); batch_size: encoder
    forward windows per device batch and per scoring group (masked-LM LLR: one
    forward per position; default: the engine's token budget).
    """

    model: str
    reference: str
    out: str
    region: Optional[Union[str, List[str]]] = None
    bed: Optional[str] = None
    bigwig: Optional[str] = None
    logo: Optional[str] = None
    window: int = 1024
    scores: Optional[str] = None
    rc_average: Optional[bool] = None
    target: Optional[str] = None
    batch_size: Optional[int] = None
    device: str = "auto"
    precision: str = "fp32"
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.region, str):
            self.region = [self.region]
        if bool(self.region) == bool(self.bed):
            raise InputError(None, "give exactly one of --region or --bed")
        if self.window < 1:
            raise InputError(None, f"--window must be >= 1, got {self.window}")
        if self.scores is not None:
            self.scores = self.scores.strip().lower()
            if self.scores not in ISM_SCORES:
                raise InputError(None, f"--scores takes llr or classifier for ism, got {self.scores!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(None, f"--batch-size must be >= 1, got {self.batch_size}")
        outs = [p for p in (self.out, self.bigwig, self.logo) if p]
        if len({os.path.realpath(p) for p in outs}) != len(outs):
            raise InputError(None, "--out, --bigwig and --logo must be different files")


def _header(cfg: IsmConfig, vs, score_name: str, track: str) -> List[str]:
    s = vs.s
    if score_name == "llr":
        how = ("next-token log-likelihood of the alt window minus the ref window" if s.causal
               else "masked-marginal log P(alt) - log P(ref) at the position")
        rc = " averaged over both strands" if vs.rc_llr else ""
        what = f"zero-shot {how}{rc}"
    else:
        cls = s.classes[1] if s.task == "binary" else score_name[len("diff_"):]
        rc = " (averaged over both strands)" if vs.rc_classifier else ""
        what = f"delta probability P_alt({cls}) - P_ref({cls}) of the fine-tuned head{rc}"
    return [f"# mambadna ism: model {cfg.model}; reference {cfg.reference}; window {cfg.window}",
            f"# score: {score_name} = {what}; the number `mambadna classify` gives for the same SNV and window",
            f"# bigwig track: {track} = mean score of the 3 substitutions per position"]


def _load_scorer(cfg: IsmConfig):
    from mambadna.components.checkpoint import load_model
    from mambadna.components.device import resolve_device
    from mambadna.inference.scoring import Scorer
    from mambadna.model.heads import has_head, load_classifier

    head = has_head(cfg.model)
    score = cfg.scores or ("classifier" if head else "llr")
    if score == "classifier" and not head:
        raise InputError(cfg.model, "--scores classifier (delta probability) needs a fine-tuned model with a "
                                    "head; this model has none (use --scores llr)")
    device = resolve_device(cfg.device)
    if head:
        clf = load_classifier(cfg.model, device)
        hc = clf.head_cfg
        sc = Scorer(clf.encoder, clf, device, pooling=hc.pooling, center_width=hc.center_width, layer=hc.layer,
                    precision=cfg.precision, batch_size=cfg.batch_size)
    else:
        sc = Scorer(load_model(cfg.model, device), None, device, precision=cfg.precision,
                    batch_size=cfg.batch_size)
    try:
        vs = variant_scorer(sc, score, cfg.rc_average)
        col, name = score_column(vs, cfg.target)
    except InputError as e:
        raise InputError(cfg.model, e.problem) from None
    if cfg.batch_size is not None:  # forward windows per device batch and per group
        vs.batch_windows = cfg.batch_size
    return vs, col, name


class _BigWig:
    """Buffered bedGraph-style entries (span 1) into a pyBigWig file; positions arrive sorted."""

    def __init__(self, path: Path, genome):
        import pyBigWig

        self.bw = pyBigWig.open(str(path), "w")
        if self.bw is None:
            raise InputError(path, "cannot open the bigWig for writing")
        self.bw.addHeader([(c, int(genome.lengths[c])) for c in genome.contigs], maxZooms=10)
        self.c: List[str] = []
        self.s: List[int] = []
        self.v: List[float] = []

    def add(self, contig: str, pos0: int, value: float) -> None:
        self.c.append(contig)
        self.s.append(pos0)
        self.v.append(value)
        if len(self.s) >= BIGWIG_FLUSH:
            self.flush()

    def flush(self) -> None:
        if self.s:
            self.bw.addEntries(self.c, self.s, ends=[p + 1 for p in self.s], values=self.v)
            self.c, self.s, self.v = [], [], []

    def close(self) -> None:
        self.flush()
        self.bw.close()


def ism(cfg: IsmConfig) -> Dict[str, Any]:
    """Run saturation mutagenesis and write ``cfg.out`` (+ bigWig, logo); see
    the module doc. Returns a summary: positions, rows, skipped (non-ACGT)
    positions, seconds, positions_per_s, score and track names."""
    from tqdm.auto import tqdm

    from mambadna.io.fasta import Genome

    outs = [p for p in (cfg.out, cfg.bigwig, cfg.logo) if p]
    inputs = [cfg.model, cfg.reference, cfg.bed]
    try:
        for p in outs:  # writable, not an input, not a folder: before any work
            prepare_output(p, "file", overwrite=True, inputs=inputs, command="ism",
                           what={cfg.out: "--out", cfg.bigwig: "--bigwig", cfg.logo: "--logo"}[p])
        genome = Genome(cfg.reference)
        if cfg.bed:
            from mambadna.io.bed import read_bed

            items, src = read_bed(cfg.bed, genome), cfg.bed
        else:
            items, src = cfg.region, cfg.reference
        regions = resolve_regions(genome, items, src)
        n_pos = check_regions(genome, regions, src)
        first = regions[0]
        if cfg.logo and first[2] - first[1] > LOGO_MAX_BP:
            raise InputError(cfg.logo, f"the logo draws the first region, {first[0]}:{first[1] + 1}-{first[2]} "
                                       f"({first[2] - first[1]:,} bp); at most {LOGO_MAX_BP:,} bp are readable "
                                       f"(give a shorter region first, or drop --logo)")
        vs, col, name = _load_scorer(cfg)
        track = "mean_" + ("llr" if name == "llr" else "diff")
        return _run(cfg, genome, regions, n_pos, vs, col, name, track, tqdm)
    finally:
        for p in outs:
            release_output_locks(p)


def _run(cfg, genome, regions, n_pos, vs, col, name, track, tqdm) -> Dict[str, Any]:
    first = regions[0]
    logo_sites = []
    counter = {"skipped": 0}
    rows = 0
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        tsv_tmp = stack.enter_context(atomic_path(cfg.out))
        bw_tmp = stack.enter_context(atomic_path(cfg.bigwig, suffix=".bw")) if cfg.bigwig else None
        bar = tqdm(total=n_pos, disable=not cfg.progress, desc="ism", unit="pos", dynamic_ncols=True, leave=False)
        stack.callback(bar.close)
        bw = _BigWig(bw_tmp, genome) if bw_tmp is not None else None
        try:
            with open(tsv_tmp, "w") as fh:
                fh.write("\n".join(_header(cfg, vs, name, track)) + "\n")
                fh.write("contig\tpos\tref\talt\tscore\n")
                for site in iter_ism(vs, genome, regions, cfg.window, col, bar, counter):
                    for a, v in zip(site.alts, site.scores):
                        fh.write(f"{site.contig}\t{site.pos}\t{site.ref}\t{a}\t{v:.6g}\n")
                    rows += len(site.alts)
                    if bw is not None:
                        bw.add(site.contig, site.pos - 1, site.summary)
                    if cfg.logo and site.contig == first[0] and first[1] < site.pos <= first[2]:
                        logo_sites.append(site)
        finally:
            if bw is not None:
                bw.close()
        publish_mode(tsv_tmp)
        if bw_tmp is not None:
            publish_mode(bw_tmp)
        dt = time.time() - t0
        if cfg.logo:
            m, ref = ism_matrix(logo_sites, first[1], first[2])
            fig = ism_figure(m, ref, first[1] + 1, title=f"{first[0]}:{first[1] + 1}-{first[2]} ISM ({name})",
                             score_name=name)
            save_png(fig, cfg.logo)
    n = rows // 3
    log.info("ism: %d positions (%d substitutions) in %.1f s, %.1f positions/s; score %s, bigWig track %s"
             "%s", n, rows, dt, n / max(dt, 1e-9), name, track,
             f"; skipped {counter['skipped']} non-ACGT positions" if counter["skipped"] else "")
    return {"positions": n, "rows": rows, "skipped": counter["skipped"], "seconds": dt,
            "positions_per_s": n / max(dt, 1e-9), "score": name, "track": track,
            "regions": len(regions)}
