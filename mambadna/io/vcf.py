"""Reference/alternative sequence windows around variants from a VCF/BCF.

Streaming: one record in memory at a time. For each record and each ALT
allele, ``iter_variant_windows`` yields a :class:`VariantWindow` with the
reference window (``window`` bases, the variant's first base, i.e. VCF POS, at
index ``window // 2``) and the alternative window with the allele applied,
kept at exactly ``window`` bases: after an insertion the right flank is
trimmed, after a deletion more right flank is fetched from the genome.
Positions beyond the contig ends are N.
"""
from __future__ import annotations

import logging
import math
import os
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

from mambadna.errors import InputError
from mambadna.io.files import check_input_file, quiet_htslib
from mambadna.io.fasta import Genome, compression_of, open_text
from mambadna.tokenizer import encode_input
from mambadna.io.files import PathLike

log = logging.getLogger("mambadna")


_ALLELE_RE = re.compile(r"^[ACGTNRYKMSWBDHVacgtnrykmswbdhv]+$")


@dataclass
class VariantStats:
    """Counters filled while streaming variants.

    records: VCF records read; alleles: ALT alleles seen (missing ALT counts
    as one); windows: windows yielded; skipped: reason -> number of alleles
    skipped ("symbolic", "breakend", "spanning_deletion", "missing_alt",
    "ref_mismatch").
    """

    records: int = 0
    alleles: int = 0
    windows: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        self.skipped[reason] += n

    def summary(self) -> str:
        """One line: counts of records, windows and skips by reason."""
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"variants: {self.records} records, {self.alleles} ALT alleles, "
                f"{self.windows} windows; skipped alleles: {parts}")

    def log_summary(self, logger: Optional[logging.Logger] = None) -> None:
        """Write :meth:`summary` as ONE log line (INFO) to the ``mambadna`` logger."""
        (logger or log).info(self.summary())


@dataclass
class VariantWindow:
    """Windows for one ALT allele of one record.

    contig: FASTA contig name (after chr-prefix matching); pos: 1-based VCF
    POS; ref_ids / alt_ids: (window,) uint8 token ids; var_start: index of the
    REF allele's first base in both windows (= window // 2); the REF allele
    occupies ``ref_ids[var_start:var_start+ref_len]`` and the ALT allele
    ``alt_ids[var_start:var_start+alt_len]`` (clipped to the window);
    kind: "SNV", "MNV", "INS", "DEL" or "COMPLEX" after trimming the shared
    prefix/suffix of REF and ALT.
    """

    contig: str
    pos: int
    id: Optional[str]
    ref: str
    alt: str
    allele_index: int
    record_index: int
    ref_ids: np.ndarray
    alt_ids: np.ndarray
    var_start: int
    ref_len: int
    alt_len: int
    kind: str


def classify_allele(ref: str, alt: str) -> str:
    """Variant kind of REF->ALT after trimming shared suffix then prefix:
    "SNV", "MNV", "INS", "DEL" or "COMPLEX"."""
    r, a = ref.upper(), alt.upper()
    while r and a and r[-1] == a[-1]:
        r, a = r[:-1], a[:-1]
    while r and a and r[0] == a[0]:
        r, a = r[1:], a[1:]
    if len(r) == len(a):
        return "SNV" if len(r) <= 1 else "MNV"
    if not r:
        return "INS"
    if not a:
        return "DEL"
    return "COMPLEX"


def _skip_reason(alt: Optional[str]) -> Optional[str]:
    if alt is None or alt in (".", ""):
        return "missing_alt"
    if alt == "*":
        return "spanning_deletion"
    if alt.startswith("<"):
        return "symbolic"
    if "[" in alt or "]" in alt or alt.startswith(".") or alt.endswith("."):
        return "breakend"
    return None


class _WindowMaker:
    """Builds windows for one record against a genome; shared by VCF and headerless readers."""

    def __init__(self, src: PathLike, genome: Genome, window: int, skip_ref_mismatch: bool,
                 stats: VariantStats):
        if int(window) < 1:
            raise InputError(None, f"window must be >= 1, got {window}")
        self.src = os.fspath(src)
        self.genome = genome
        self.window = int(window)
        self.center = self.window // 2
        self.skip_ref_mismatch = skip_ref_mismatch
        self.stats = stats
        self._contigs: Dict[str, str] = {}

    def resolve(self, chrom: str, where: str) -> str:
        c = self._contigs.get(chrom)
        if c is None:
            try:
                c = self.genome.resolve_contig(chrom)
            except InputError:
                names = self.genome.contigs
                few = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise InputError(self.src, f"{where}: contig {chrom!r} is not in the reference "
                                           f"{self.genome.path} (its contigs: {few})") from None
            self._contigs[chrom] = c
        return c

    def make(self, chrom: str, pos: int, vid: Optional[str], ref: str, alts, record_index: int,
             where: str) -> Iterator[VariantWindow]:
        st = self.stats
        st.records += 1
        alts = tuple(alts) if alts else (None,)
        st.alleles += len(alts)
        if not ref or not _ALLELE_RE.match(ref):
            raise InputError(self.src, f"{where}: invalid REF allele {ref!r}")
        contig = self.resolve(chrom, where)
        if pos < 1:
            raise InputError(self.src, f"{where}: POS must be >= 1, got {pos}")
        start0 = pos - 1
        W, c = self.window, self.center
        # one fetch covers the ref window and enough right flank for any deletion
        lo = start0 - c
        hi = max(lo + W, start0 + len(ref) + W)
        seq = self.genome.fetch(contig, lo, hi, pad=True)
        fasta_ref = seq[c: c + len(ref)]
        usable = [(i, a) for i, a in enumerate(alts, 1) if _skip_reason(a) is None]
        for i, a in enumerate(alts, 1):
            r = _skip_reason(a)
            if r is not None:
                st.skip(r)
        L = self.genome.lengths[contig]
        if start0 + len(ref) > L:  # a coordinate problem (another assembly?), not a REF mismatch
            if self.skip_ref_mismatch:
                st.skip("beyond_contig", len(usable))
                return
            what = f"POS {pos}" if start0 >= L else f"REF {ref!r} at POS {pos} (ending at {start0 + len(ref)})"
            raise InputError(self.src, f"{where}: {what} is beyond the end of contig {contig} (length {L}) in "
                                       f"the reference {self.genome.path}: is it the same assembly as the VCF?")
        if not _ref_compatible(ref.upper(), fasta_ref):
            if self.skip_ref_mismatch:
                st.skip("ref_mismatch", len(usable))
                return
            alt_txt = ",".join(a if a is not None else "." for a in alts)
            raise InputError(self.src, f"{where}: REF allele {ref!r} does not match the reference "
                                       f"{self.genome.path} ({contig}:{pos} has {fasta_ref or '<past end>'!r}; "
                                       f"ALT {alt_txt})")
        ref_ids = _enc(seq[:W], self.src, where)
        left = seq[:c]
        for ai, a in usable:
            if not _ALLELE_RE.match(a):
                raise InputError(self.src, f"{where}: invalid ALT allele {a!r}")
            a_up = a.upper()
            right = seq[c + len(ref):]
            alt_seq = (left + a_up + right)[:W]
            st.windows += 1
            yield VariantWindow(
                contig=contig, pos=pos, id=vid, ref=ref, alt=a, allele_index=ai,
                record_index=record_index, ref_ids=ref_ids, alt_ids=_enc(alt_seq, self.src, where),
                var_start=c, ref_len=len(ref), alt_len=len(a), kind=classify_allele(ref, a),
            )


def _ref_compatible(vcf_ref: str, fasta_ref: str) -> bool:
    """Case-insensitive equality where an N on either side matches any base."""
    if len(vcf_ref) != len(fasta_ref):
        return False
    return all(x == y or x == "N" or y == "N" for x, y in zip(vcf_ref, fasta_ref))


def _enc(s: str, src: str, where: str) -> np.ndarray:
    return encode_input(s, src, name=where)




def _first_line(path: str) -> str:
    if compression_of(path) != "none":
        import gzip
        with gzip.open(path, "rb") as fh:
            head = fh.read(4)
        if head.startswith(b"BCF"):
            return "BCF"
    else:
        with open(path, "rb") as fh:
            if fh.read(3) == b"BCF":
                return "BCF"
    try:
        with open_text(path) as fh:
            for line in fh:
                if line.strip():
                    return line
    except (OSError, EOFError, zlib.error):
        return ""
    return ""


def _looks_headerless(first: str) -> bool:
    cols = first.rstrip("\r\n").split("\t")
    return len(cols) == 5 and not first.startswith("#") and cols[1].strip().isdigit()


def _count_header_lines(path: str) -> int:
    """Number of leading '#' lines of a text VCF (pysam's header text adds lines)."""
    n = 0
    try:
        with open_text(path) as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                n += 1
    except (OSError, EOFError, zlib.error):
        return 0
    return n


def _text_line(path: str, lineno: int) -> Optional[str]:
    try:
        with open_text(path) as fh:
            for i, line in enumerate(fh, 1):
                if i == lineno:
                    return line.rstrip("\r\n")
    except (OSError, EOFError, zlib.error):
        return None
    return None


def _plain_copy(path: str) -> str:
    """A decompressed copy of a plain-gzip VCF in the cache folder (made once per file version)."""
    import gzip
    import hashlib
    import shutil

    from mambadna.io.fasta import cache_root
    from mambadna.io.files import atomic_path

    p = Path(path)
    st = p.stat()
    key = hashlib.sha1(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    out = cache_root() / f"{key}-{name}"
    if out.exists():
        return str(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, gzip.open(p, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot decompress gzip VCF: {e}") from None
    return str(out)


def iter_variant_windows(vcf_path: PathLike, genome: Genome, window: int = 1024,
                         skip_ref_mismatch: bool = False,
                         stats: Optional[VariantStats] = None) -> Iterator[VariantWindow]:
    """Stream :class:`VariantWindow` objects from a VCF/BCF (plain or bgzip).

    A headerless 5-column list (``CHROM POS ID REF ALT``) is detected and read
    with :func:`iter_headerless_variant_windows`. Symbolic alleles, breakends,
    ``*`` and missing ALT are skipped and counted in ``stats``.

    Raises InputError naming the file and record on: missing/empty/non-VCF
    file, no variant records, malformed line, contig absent from the FASTA,
    REF mismatch (unless ``skip_ref_mismatch``: counted and skipped).
    """
    for _, _, windows in iter_variant_records(vcf_path, genome, window, skip_ref_mismatch, stats):
        yield from windows


def iter_variant_records(vcf_path: PathLike, genome: Genome, window: int = 1024,
                         skip_ref_mismatch: bool = False, stats: Optional[VariantStats] = None,
                         on_header: Optional[Callable] = None,
                         select: Optional[Callable[[int], bool]] = None) -> Iterator[Tuple[int, Any, Optional[List[VariantWindow]]]]:
    """The one VCF reader: ``(record index, record, windows of its ALT alleles)``
    for every record, in file order (windows may be empty: skipped alleles).

    ``record`` is the pysam ``VariantRecord`` (None for a headerless list), so
    an annotator can write the very record that was scored;
    ``on_header(header)`` is called once, before the first record (with None
    for a headerless list). Errors as :func:`iter_variant_windows`.
    ``select(index)``: records it rejects are yielded with windows None, without
    touching the reference (a sharded run makes windows only for its own
    records; the rank that owns a record reports its errors), and are not
    counted in ``stats``.
    """
    import pysam

    quiet_htslib()
    path = os.fspath(vcf_path)
    check_input_file(path, "VCF/BCF file")
    stats = stats if stats is not None else VariantStats()
    first = _first_line(path)
    maker = _WindowMaker(path, genome, window, skip_ref_mismatch, stats)
    if first != "BCF" and _looks_headerless(first):
        if on_header is not None:
            on_header(None)
        for idx, (chrom, pos, vid, ref, alts, lineno) in enumerate(read_headerless_variants(path)):
            if select is not None and not select(idx):
                yield idx, None, None
                continue
            yield idx, None, list(maker.make(chrom, pos, vid, ref, alts, idx, f"line {lineno} ({chrom}:{pos})"))
        return
    if first != "BCF" and not first.startswith("##fileformat=VCF") and not first.startswith("#CHROM"):
        raise InputError(path, "not a VCF/BCF file (no '##fileformat=VCF' header line)")
    try:
        # htslib cannot read plain gzip (only bgzip): read a decompressed copy (cached)
        vf = pysam.VariantFile(_plain_copy(path) if compression_of(path) == "gzip" else path)
    except (ValueError, OSError) as e:
        raise InputError(path, f"not a readable VCF/BCF file ({e})") from None
    n_header = _count_header_lines(path) if first != "BCF" else 0
    idx = -1
    try:
        if on_header is not None:
            on_header(vf.header)
        it = iter(vf)
        while True:
            try:
                rec = next(it)
            except StopIteration:
                break
            except (OSError, ValueError) as e:
                nrec = idx + 2
                if n_header:
                    lineno = n_header + nrec
                    line = _text_line(path, lineno)
                    snippet = f": {line[:80]!r}" if line is not None else ""
                    raise InputError(path, f"line {lineno} (record {nrec}): malformed VCF line "
                                           f"({e}){snippet}") from None
                raise InputError(path, f"record {nrec}: malformed BCF record ({e})") from None
            idx += 1
            if select is not None and not select(idx):
                yield idx, rec, None
                continue
            where = f"record {rec.chrom}:{rec.pos}" + (f" (line {n_header + idx + 1})" if n_header else
                                                         f" (record {idx + 1})")
            yield idx, rec, list(maker.make(rec.chrom, rec.pos, rec.id, rec.ref, rec.alts, idx, where))
    finally:
        vf.close()
    if idx < 0:
        raise InputError(path, "no variant records")


class VcfAnnotator:
    """Writes scored records as bgzip VCF with INFO fields (Number=A, Float),
    one value per ALT allele (missing where an allele was not scored).

    fields: (score column, INFO id, description). :meth:`attach` takes the
    reader's header (pass it as ``on_header`` of :func:`iter_variant_records`);
    :meth:`write` writes one record with its per-allele scores.
    """

    def __init__(self, src: PathLike, tmp_out: Optional[Path], fields: List[Tuple[str, str, str]]):
        self.src, self.tmp_out, self.fields = os.fspath(src), tmp_out, fields
        self.writer = None
        self.header = None

    def attach(self, header) -> None:
        import pysam

        if header is None:
            raise InputError(self.src, "--vcf-out needs a VCF/BCF with a header")
        for _, key, desc in self.fields:
            if key in header.info:
                raise InputError(self.src, f"INFO field {key} already present; refusing to overwrite it")
            header.info.add(key, "A", "Float", desc)
        self.header = header
        if self.tmp_out is not None:  # None: records are formatted with annotate() + str(rec)
            self.writer = pysam.VariantFile(str(self.tmp_out), "wz", header=header)

    def write(self, rec, scores: Dict[int, Dict[str, float]]) -> None:
        """``scores``: ALT allele index (1-based) -> {column: value}."""
        self.annotate(rec, scores)
        self.writer.write(rec)

    def annotate(self, rec, scores: Dict[int, Dict[str, float]]) -> None:
        """Set the INFO fields of ``rec`` from ``scores`` (``str(rec)`` is then its annotated line)."""
        n_alt = len(rec.alts or ())
        if scores and n_alt:
            for col, key, _ in self.fields:
                vals = [scores.get(ai, {}).get(col) for ai in range(1, n_alt + 1)]
                vals = [None if v is None or not math.isfinite(v) else round(v, 6) for v in vals]
                if any(v is not None for v in vals):
                    rec.info[key] = tuple(vals)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def tabix_index(path: Path, final: PathLike) -> None:
    """tabix-index a bgzipped VCF in place (``path.tbi``); ``final`` names the output in errors."""
    import pysam

    try:
        pysam.tabix_index(str(path), preset="vcf", force=True, keep_original=True)
    except (OSError, ValueError) as e:
        raise InputError(final, f"cannot tabix-index the annotated VCF (is the input sorted by position?): {e}") from None


def read_headerless_variants(path: PathLike) -> Iterator[Tuple[str, int, Optional[str], str, Tuple[str, ...], int]]:
    """Yield ``(chrom, pos, id, ref, alts, line_number)`` from a headerless
    tab-separated ``CHROM POS ID REF ALT`` list (plain or gzip; '#' lines
    skipped; ALT may be comma-separated). InputError names file and line."""
    path = os.fspath(path)
    check_input_file(path, "VCF/BCF file")
    n = 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) < 5:
                    raise InputError(path, f"line {lineno}: expected 5 tab-separated columns "
                                           f"CHROM POS ID REF ALT, found {len(cols)}")
                try:
                    pos = int(cols[1])
                except ValueError:
                    raise InputError(path, f"line {lineno}: POS {cols[1]!r} is not an integer") from None
                vid = None if cols[2] in (".", "") else cols[2]
                alts = tuple(a for a in cols[4].split(",")) if cols[4] not in (".", "") else ()
                n += 1
                yield cols[0], pos, vid, cols[3], alts, lineno
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if n == 0:
        raise InputError(path, "no variant records")
