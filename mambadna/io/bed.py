"""BED reading and simple interval arithmetic (0-based half-open)."""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from mambadna.errors import InputError
from mambadna.io.files import check_input_file
from mambadna.io.fasta import Genome, open_text
from mambadna.io.files import PathLike



@dataclass(frozen=True)
class Interval:
    """One BED record. ``contig`` is the genome's name for it when read with a
    genome (chr-prefix matching applied); ``extra`` holds columns after the
    6th; ``line`` is the 1-based line number in the file (0 when built in code)."""

    contig: str
    start: int
    end: int
    name: Optional[str] = None
    score: Optional[str] = None
    strand: str = "."
    extra: Tuple[str, ...] = ()
    line: int = 0

    def __len__(self) -> int:
        return self.end - self.start


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


def read_bed_table(path: PathLike, genome: Optional[Genome] = None,
                   allow_empty: bool = False) -> Tuple[Optional[List[str]], List[Interval]]:
    """Read a BED file and return ``(header, intervals)``.

    ``header`` is the list of column names when the file has a header line (a
    ``#``-comment right before the data with as many columns, or a first data
    line whose start/end columns are not integers), else None. Lines starting
    with ``track``, ``browser`` or ``#`` are skipped. Columns are split on tabs
    (on any whitespace when a line has no tab). Plain or gzip.

    With ``genome``: contig names are resolved (with/without ``chr``) and
    ``end`` is checked against the contig length. Every problem raises
    InputError naming the file and line.
    """
    path = os.fspath(path)
    check_input_file(path, "BED file")
    header: Optional[List[str]] = None
    last_comment: Optional[List[str]] = None
    out: List[Interval] = []
    try:
        with open_text(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                if line.startswith(("track", "browser")):
                    continue
                if line.startswith("#"):
                    last_comment = line.lstrip("#").strip().split("\t" if "\t" in line else None)
                    continue
                cols = line.split("\t") if "\t" in line else line.split()
                if len(cols) < 3:
                    raise InputError(path, f"line {lineno}: expected at least 3 columns "
                                           f"(chrom, start, end), found {len(cols)}")
                if not out and header is None:
                    if not (_is_int(cols[1]) and _is_int(cols[2])):
                        header = [c.strip() for c in cols]
                        continue
                    if last_comment is not None and len(last_comment) == len(cols) \
                            and not _is_int(last_comment[1]):
                        header = [c.strip() for c in last_comment]
                try:
                    start, end = int(cols[1]), int(cols[2])
                except ValueError:
                    raise InputError(path, f"line {lineno}: start/end must be integers, "
                                           f"got {cols[1]!r} and {cols[2]!r}") from None
                if start < 0:
                    raise InputError(path, f"line {lineno}: negative start {start}")
                if start >= end:
                    raise InputError(path, f"line {lineno}: start {start} is not before end {end}")
                contig = cols[0]
                if genome is not None:
                    try:
                        contig = genome.resolve_contig(contig)
                    except InputError as e:
                        raise InputError(path, f"line {lineno}: {e.problem} in {genome.path}") from None
                    L = genome.lengths[contig]
                    if end > L:
                        raise InputError(path, f"line {lineno}: interval {cols[0]}:{start}-{end} "
                                               f"extends beyond the end of contig {contig} (length {L})")
                strand = cols[5].strip() if len(cols) > 5 and cols[5].strip() else "."
                if strand not in ("+", "-", "."):
                    raise InputError(path, f"line {lineno}: strand must be '+', '-' or '.', got {strand!r}")
                out.append(Interval(
                    contig=contig, start=start, end=end,
                    name=cols[3] if len(cols) > 3 else None,
                    score=cols[4] if len(cols) > 4 else None,
                    strand=strand,
                    extra=tuple(cols[6:]),
                    line=lineno,
                ))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if not out and not allow_empty:
        raise InputError(path, "no intervals in BED file")
    return header, out


def read_bed(path: PathLike, genome: Optional[Genome] = None) -> List[Interval]:
    """Read a BED file into a list of :class:`Interval` (see :func:`read_bed_table`).

    Raises InputError (file and line) on non-integer or inverted coordinates,
    contigs missing from ``genome``, intervals past a contig's end, or no intervals.
    """
    return read_bed_table(path, genome)[1]


# --------------------------------------------------------------------------- arithmetic
Spans = Dict[str, List[Tuple[int, int]]]


def merge_spans(spans: Spans) -> Spans:
    """Sort and merge overlapping/adjacent spans per contig."""
    out: Spans = {}
    for c, lst in spans.items():
        merged: List[Tuple[int, int]] = []
        for s, e in sorted(lst):
            if e <= s:
                continue
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        if merged:
            out[c] = merged
    return out


def intersect_spans(a: Spans, b: Spans) -> Spans:
    """Intersection of two span sets (both merged first)."""
    a, b = merge_spans(a), merge_spans(b)
    out: Spans = {}
    for c in a:
        if c not in b:
            continue
        i = j = 0
        la, lb = a[c], b[c]
        res = []
        while i < len(la) and j < len(lb):
            s, e = max(la[i][0], lb[j][0]), min(la[i][1], lb[j][1])
            if s < e:
                res.append((s, e))
            if la[i][1] < lb[j][1]:
                i += 1
            else:
                j += 1
        if res:
            out[c] = res
    return out


def subtract_spans(a: Spans, b: Spans) -> Spans:
    """Spans of ``a`` not covered by ``b``."""
    a, b = merge_spans(a), merge_spans(b)
    out: Spans = {}
    for c, la in a.items():
        cuts = b.get(c, [])
        res = []
        for s, e in la:
            cur = s
            for bs, be in cuts:
                if be <= cur or bs >= e:
                    continue
                if bs > cur:
                    res.append((cur, bs))
                cur = max(cur, be)
                if cur >= e:
                    break
            if cur < e:
                res.append((cur, e))
        if res:
            out[c] = res
    return out


def spans_from_intervals(intervals: Sequence[Interval]) -> Spans:
    """Group intervals by contig as (start, end) spans (merged)."""
    sp: Spans = {}
    for iv in intervals:
        sp.setdefault(iv.contig, []).append((iv.start, iv.end))
    return merge_spans(sp)
