"""In-silico saturation mutagenesis (ISM): every substitution at every position
of genomic regions, scored through :class:`~mambadna.inference.scoring.VariantScorer`.

Each position is one VCF-like site with its three alternative bases, windowed
by the very :class:`~mambadna.io.vcf._WindowMaker` that ``classify`` uses for a
VCF (the window centred on the site, ``var_start = window // 2``), so an ISM
score *is* the number ``mambadna classify`` gives for that SNV and window:

* ``llr`` (zero-shot): the masked-marginal log P(alt) - log P(ref) of a
  bidirectional model (one masked forward per position, shared by its three
  ALT alleles), or the next-token log-likelihood ratio of a causal model;
  ``rc_average`` averages it with the score of the reverse-complement view;
* ``classifier`` (fine-tuned head): Δ probability, P_alt - P_ref of the target
  class (binary: the positive class).

Positions stream through the scorer in token-budget groups (input preparation
in a background thread), so memory does not grow with the region length.
Positions whose reference base is not A, C, G or T (N, IUPAC codes) are skipped.
Substitutions are on the reference's forward strand (a BED strand is ignored).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from mambadna.errors import InputError
from mambadna.inference.scoring import Scorer, VariantScorer
from mambadna.io.fasta import Genome

log = logging.getLogger("mambadna")

BASES = "ACGT"
ISM_SCORES = ("llr", "classifier")
FETCH_CHUNK = 1 << 16  # bases of a region read at a time (memory flat in region length)

Region = Tuple[str, int, int]  # contig, 0-based start, end (half-open)


@dataclass
class IsmSite:
    """The three substitutions at one position. pos: 1-based; alts: the three
    other bases in A, C, G, T order; scores: (3,) float64 in that order."""

    contig: str
    pos: int
    ref: str
    alts: Tuple[str, str, str]
    scores: np.ndarray

    @property
    def summary(self) -> float:
        """Mean score of the three substitutions (the bigWig track)."""
        return float(np.mean(self.scores))


# --------------------------------------------------------------------------- regions
def resolve_regions(genome: Genome, regions: Iterable, src=None) -> List[Region]:
    """Regions as ``(contig, start0, end)``, sorted in genome order and merged
    where they overlap or touch (each position is scored once; the bigWig
    needs sorted, disjoint entries).

    Items: ``"CONTIG:START-END"`` strings (1-based inclusive, samtools style;
    ``CONTIG`` or ``CONTIG:START`` run to the contig end), ``(contig, start0,
    end)`` tuples or BED :class:`~mambadna.io.bed.Interval` objects. InputError
    (naming ``src``, else the reference) on unknown contigs, empty regions and
    regions beyond a contig's end."""
    from mambadna.io.bam import parse_region

    where = src if src is not None else genome.path
    out: List[Region] = []
    for r in regions:
        if isinstance(r, str):
            text = r
            contig, s, e = parse_region(r, genome.contigs, where)
        elif hasattr(r, "contig"):
            text = f"{r.contig}:{r.start + 1}-{r.end}"
            contig, s, e = r.contig, r.start, r.end
        else:
            contig, s, e = r
            text = f"{contig}:{int(s) + 1}-{e}"
        try:
            contig = genome.resolve_contig(contig)
        except InputError as err:
            raise InputError(where, f"region {text!r}: {err.problem}") from None
        L = genome.lengths[contig]
        s = 0 if s is None else int(s)
        e = L if e is None else int(e)
        if s < 0 or e <= s:
            raise InputError(where, f"region {text!r} is empty or inverted")
        if e > L or s >= L:
            raise InputError(where, f"region {text!r} extends beyond the end of contig {contig} (length {L:,})")
        out.append((contig, s, e))
    if not out:
        raise InputError(where, "no regions to mutate")
    order = {c: i for i, c in enumerate(genome.contigs)}
    out.sort(key=lambda t: (order[t[0]], t[1], t[2]))
    merged: List[Region] = [out[0]]
    for c, s, e in out[1:]:
        pc, ps, pe = merged[-1]
        if c == pc and s <= pe:
            merged[-1] = (c, ps, max(pe, e))
        else:
            merged.append((c, s, e))
    return merged


def _region_bases(genome: Genome, region: Region) -> Iterator[Tuple[int, str]]:
    """(0-based start, upper-case sequence) pieces of a region, FETCH_CHUNK at a time."""
    c, s, e = region
    for a in range(s, e, FETCH_CHUNK):
        yield a, genome.fetch(c, a, min(e, a + FETCH_CHUNK), pad=False)


def check_regions(genome: Genome, regions: Sequence[Region], src=None) -> int:
    """Number of positions with an A/C/G/T reference base; InputError when a
    region holds none (only N)."""
    total = 0
    for r in regions:
        n = 0
        for _, seq in _region_bases(genome, r):
            n += sum(seq.count(b) for b in BASES)
        if n == 0:
            c, s, e = r
            raise InputError(src if src is not None else genome.path,
                             f"region {c}:{s + 1}-{e} holds only N (no A, C, G or T base to mutate)")
        total += n
    return total


# --------------------------------------------------------------------------- scoring
def variant_scorer(scorer: Scorer, score: str = "llr", rc_average: Optional[bool] = None,
                   window: int = 1024) -> VariantScorer:
    """The :class:`VariantScorer` ``classify`` builds for ``--scores <score>``
    (``rc_average``: zero-shot both strands when True; classifier: the head's
    setting when None). Masked-LM groups hold a full token budget of *sites*
    (one masked forward each), not of windows."""
    if score not in ISM_SCORES:
        raise InputError(None, f"--scores takes llr or classifier for ism, got {score!r}")
    if score == "classifier":
        if scorer.clf is None:
            raise InputError(None, "--scores classifier (Δ probability) needs a fine-tuned model with a head "
                                   "(this one has none; use --scores llr)")
        if scorer.task == "token":
            raise InputError(None, "--scores classifier needs a sequence-level head (this one is per token)")
        rc_clf = scorer.clf.head_cfg.rc_average if rc_average is None else bool(rc_average)
        return VariantScorer(scorer, ("classifier",), rc_classifier=rc_clf)
    if scorer.causal:  # next-token LLR: one forward per window (ref and each ALT), default groups
        return VariantScorer(scorer, ("llr",), rc_llr=bool(rc_average))
    sites = max(1, scorer.engine.max_tokens // max(1, int(window)))
    return VariantScorer(scorer, ("llr",), rc_llr=bool(rc_average), batch_windows=3 * sites)


def score_column(vs: VariantScorer, target: Optional[str] = None) -> Tuple[int, str]:
    """(column index in the scorer's output, column name) of the ISM score:
    ``llr``, or ``diff``/``diff_<target>`` for the classifier (default target:
    the positive class of a binary head, the only output of a one-output head)."""
    cols = vs.columns()
    if "llr" in vs.scores:
        return cols.index("llr"), "llr"
    s = vs.s
    if s.task == "binary":
        if target is not None and target != s.classes[1]:
            raise InputError(None, f"--target: a binary head scores its positive class {s.classes[1]!r}, "
                                   f"not {target!r}")
        return cols.index("diff"), "diff"
    if target is None:
        if len(s.classes) != 1:
            raise InputError(None, f"--target: name the class whose Δ probability to score "
                                   f"(one of {', '.join(s.classes)})")
        target = s.classes[0]
    if target not in s.classes:
        raise InputError(None, f"--target {target!r} is not a class of the head ({', '.join(s.classes)})")
    return cols.index(f"diff_{target}"), f"diff_{target}"


def _sites(genome: Genome, regions: Sequence[Region], window: int, counter: dict):
    """(key, windows of the three substitutions) per A/C/G/T position, as ``classify`` makes them."""
    from mambadna.io.vcf import VariantStats, _WindowMaker

    maker = _WindowMaker(genome.path, genome, window, False, VariantStats())
    k = 0
    for region in regions:
        c = region[0]
        for a, seq in _region_bases(genome, region):
            for i, b in enumerate(seq):
                if b not in BASES:
                    counter["skipped"] += 1
                    continue
                pos = a + i + 1
                alts = tuple(x for x in BASES if x != b)
                yield (c, pos, b, alts), list(maker.make(c, pos, None, b, alts, k, f"{c}:{pos}"))
                k += 1


def iter_ism(vs: VariantScorer, genome: Genome, regions: Sequence[Region], window: int = 1024,
             column: int = 0, progress=None, counter: Optional[dict] = None) -> Iterator[IsmSite]:
    """Stream :class:`IsmSite` objects for resolved ``regions`` (see
    :func:`resolve_regions`) with a ready :class:`VariantScorer`; ``column``
    picks the score (:func:`score_column`); ``progress`` (a tqdm bar) is
    advanced by one per position; ``counter['skipped']`` counts non-ACGT positions."""
    counter = counter if counter is not None else {}
    counter.setdefault("skipped", 0)
    for key, _, arr in vs.score_records(_sites(genome, regions, window, counter)):
        c, pos, b, alts = key
        if progress is not None:
            progress.update(1)
        yield IsmSite(c, pos, b, alts, arr[:, column].copy())


def _as_scorer(model, device, precision, batch_size) -> Scorer:
    if isinstance(model, Scorer):
        return model
    from mambadna.components.checkpoint import load_model
    from mambadna.components.device import resolve_device
    from mambadna.model.heads import has_head, load_classifier

    dev = resolve_device(device)
    if has_head(model):
        clf = load_classifier(model, dev)
        enc = clf.encoder
        hc = clf.head_cfg
        return Scorer(enc, clf, dev, pooling=hc.pooling, center_width=hc.center_width, layer=hc.layer,
                      precision=precision, batch_size=batch_size)
    return Scorer(load_model(model, dev), None, dev, precision=precision, batch_size=batch_size)


def saturation_mutagenesis(model: Union[str, "Scorer"], reference: Union[str, Genome], regions,
                           window: int = 1024, score: Optional[str] = None, rc_average: Optional[bool] = None,
                           target: Optional[str] = None, device: str = "auto", precision: str = "fp32",
                           batch_size: Optional[int] = None, progress: bool = False) -> Iterator[IsmSite]:
    """Every substitution at every A/C/G/T position of ``regions``, streamed
    as :class:`IsmSite` (position order, regions sorted and merged).

    model: model directory or a :class:`Scorer`; reference: FASTA path or
    :class:`Genome`; regions: ``"C:S-E"`` strings, ``(contig, start0, end)``
    tuples or BED intervals (one item alone is fine); score: ``"llr"`` or
    ``"classifier"`` (default: classifier when the model has a head);
    rc_average, target: see :func:`variant_scorer` and :func:`score_column`.
    Progress (tqdm) counts positions/s. Memory is flat in region length."""
    from tqdm.auto import tqdm

    genome = reference if isinstance(reference, Genome) else Genome(reference)
    if isinstance(regions, (str, tuple)) or hasattr(regions, "contig"):
        regions = [regions]
    regs = resolve_regions(genome, regions)
    n = check_regions(genome, regs)
    sc = _as_scorer(model, device, precision, batch_size)
    score = score or ("classifier" if sc.clf is not None else "llr")
    vs = variant_scorer(sc, score, rc_average, window)
    col, _ = score_column(vs, target)
    bar = tqdm(total=n, disable=not progress, desc="ism", unit="pos", dynamic_ncols=True, leave=False)
    t0 = time.time()
    try:
        yield from iter_ism(vs, genome, regs, window, col, bar)
    finally:
        bar.close()
    dt = time.time() - t0
    log.debug("ism: %d positions in %.1f s (%.1f positions/s)", n, dt, n / max(dt, 1e-9))


def ism_matrix(sites: Iterable[IsmSite], start: int, end: int) -> Tuple[np.ndarray, str]:
    """(end - start, 4) scores over A, C, G, T (the reference base's entry 0;
    positions without a site, e.g. N, are NaN) and the reference sequence
    ('N' where no site), from the sites of one region [start, end) (0-based)."""
    m = np.full((end - start, 4), np.nan)
    ref = ["N"] * (end - start)
    for st in sites:
        i = st.pos - 1 - start
        if not 0 <= i < end - start:
            continue
        m[i] = 0.0
        for a, v in zip(st.alts, st.scores):
            m[i, BASES.index(a)] = v
        ref[i] = st.ref
    return m, "".join(ref)
