"""In-silico saturation mutagenesis (ISM): every substitution at every position
of genomic regions, scored through :class:`~mambadna.inference.scoring.VariantScorer`.

Each position is one VCF-like site with its three alternative bases, windowed
exactly as the :class:`~mambadna.io.vcf._WindowMaker` that ``classify`` uses for a
VCF windows that SNV (the window centred on the site, ``var_start = window // 2``;
made here a chunk of positions at a time from one fetch, see :func:`_sites`), so an
ISM score *is* the number ``mambadna classify`` gives for that SNV and window:

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
def variant_scorer(scorer: Scorer, score: str = "llr", rc_average: Optional[bool] = None) -> VariantScorer:
    """The :class:`VariantScorer` ``classify`` builds for ``--scores <score>``
    (``rc_average``: zero-shot both strands when True; classifier: the head's
    setting when None). Its groups hold a token budget of encoder *forwards*
    (:meth:`VariantScorer._forwards`: masked-LM LLR, one masked forward per
    position for its three substitutions), so no batch size is set here."""
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
    return VariantScorer(scorer, ("llr",), rc_llr=bool(rc_average))


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


ISM_CHUNK = 4096  # positions whose windows are made from one fetch (one tokenising) ...
ISM_CHUNK_BYTES = 16 << 20  # ... at most: their ALT windows (3 * window bytes a position) fit in this

_ALTS = {b: tuple(x for x in BASES if x != b) for b in BASES}
_ALT_TABLE: Optional[np.ndarray] = None


def _alt_table() -> np.ndarray:
    """(256, 3) uint8: ASCII code of a reference base -> token ids of its three ALT bases."""
    global _ALT_TABLE
    if _ALT_TABLE is None:
        from mambadna.tokenizer import encode

        t = np.zeros((256, 3), dtype=np.uint8)
        for b in BASES:
            t[ord(b)] = encode("".join(_ALTS[b]))
        _ALT_TABLE = t
    return _ALT_TABLE


def _chunk_windows(maker, contig: str, a: int, seq: str, ids: np.ndarray, first: int, counter: dict):
    """``(key, windows)`` of the positions ``a ..`` of one chunk: ``seq`` / ``ids``
    cover ``[a - center, a + len(chunk) - 1 - center + W)`` (N-padded at the
    contig ends), so that the window of chunk position i is ``ids[i:i + W]``.
    Field for field the windows ``maker.make`` gives for the SNV (record index
    ``first`` onwards): the reference window is one view shared by the three
    alleles, the ALT windows copies of it with the centre replaced."""
    from numpy.lib.stride_tricks import sliding_window_view

    from mambadna.io.vcf import VariantWindow

    W, cc = maker.window, maker.center
    n = len(seq) - W + 1
    centre = np.frombuffer(seq[cc:cc + n].encode("latin-1"), dtype=np.uint8)
    idx = np.flatnonzero(np.isin(centre, np.frombuffer(BASES.encode(), dtype=np.uint8)))
    refs = sliding_window_view(ids, W)
    alt = np.empty((len(idx), 3, W), dtype=ids.dtype)  # ALT windows of the A/C/G/T positions, in order
    alt[:] = refs[idx][:, None, :]
    alt[:, :, cc] = _alt_table()[centre[idx]]
    k = first
    j = 0
    for i in range(n):
        b = seq[cc + i]
        if b not in BASES:
            counter["skipped"] += 1
            continue
        alts = _ALTS[b]
        aw = alt[j]
        j += 1
        pos = a + i + 1
        ref_ids = refs[i]
        yield (contig, pos, b, alts), [
            VariantWindow(contig=contig, pos=pos, id=None, ref=b, alt=x, allele_index=ai, record_index=k,
                          ref_ids=ref_ids, alt_ids=aw[ai - 1], var_start=cc, ref_len=1, alt_len=1, kind="SNV")
            for ai, x in enumerate(alts, 1)]
        k += 1
    return k


def _sites(genome: Genome, regions: Sequence[Region], window: int, counter: dict):
    """(key, windows of the three substitutions) per A/C/G/T position, as
    ``classify`` makes them (:meth:`~mambadna.io.vcf._WindowMaker.make` for
    that SNV), vectorised: each chunk of :data:`ISM_CHUNK` positions is
    fetched with its flanks and tokenised once (fewer positions for long windows,
    see :data:`ISM_CHUNK_BYTES`), and its windows are views and
    copies of that one array. A chunk holding a byte the tokenizer rejects
    goes through ``make`` position by position (the same error, at the same
    position)."""
    from mambadna.io.vcf import VariantStats, _WindowMaker
    from mambadna.tokenizer import TokenizationError, encode

    maker = _WindowMaker(genome.path, genome, window, False, VariantStats())
    W, cc = maker.window, maker.center
    step = max(1, min(ISM_CHUNK, ISM_CHUNK_BYTES // (3 * W)))
    k = 0
    for region in regions:
        c, s, e = region
        c = maker.resolve(c, f"{c}:{s + 1}")
        for a in range(s, e, step):
            b = min(e, a + step)
            seq = genome.fetch(c, a - cc, b - 1 - cc + W, pad=True)
            try:
                ids = encode(seq)
            except TokenizationError:
                ids = None
            if ids is not None:
                k = yield from _chunk_windows(maker, c, a, seq, ids, k, counter)
                continue
            for i in range(b - a):
                x = seq[cc + i]
                if x not in BASES:
                    counter["skipped"] += 1
                    continue
                pos = a + i + 1
                alts = _ALTS[x]
                yield (c, pos, x, alts), list(maker.make(c, pos, None, x, alts, k, f"{c}:{pos}"))
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
    vs = variant_scorer(sc, score, rc_average)
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
