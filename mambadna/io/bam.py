"""Reads from BAM/CRAM files (pysam), for a region or the whole file, with flag
and mapping-quality filters."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

from mambadna.errors import InputError
from mambadna.io.files import check_input_file, quiet_htslib
from mambadna.io.fasta import _dir_writable, match_contig
from mambadna.tokenizer import reverse_complement_str
from mambadna.io.files import PathLike



@dataclass(frozen=True)
class Read:
    """One alignment record.

    start/end: 0-based half-open reference span (-1/-1 when unmapped);
    strand: '+' or '-' ('.' when unmapped); sequence: the stored SEQ, i.e.
    reference-forward orientation, unless read with ``original_orientation``.
    """

    name: str
    contig: Optional[str]
    start: int
    end: int
    strand: str
    sequence: str
    mapq: int = 0
    flag: int = 0


_REGION_RE = re.compile(r"^(?P<contig>.+?):(?P<start>[\d,]+)(?:-(?P<end>[\d,]+))?$")


def parse_region(region: str, contigs: Optional[Sequence[str]] = None,
                 path: Optional[PathLike] = None) -> Tuple[str, Optional[int], Optional[int]]:
    """Parse a samtools-style region ``"chr1:100-200"`` (1-based, inclusive)
    into ``(contig, start0, end)`` 0-based half-open; ``"chr1"`` gives
    ``(contig, None, None)`` and ``"chr1:100"`` ``(contig, 99, None)``.

    With ``contigs``: a whole string that is a contig name wins (names may
    contain ':'), and the contig is matched with/without the ``chr`` prefix.
    Raises InputError (naming ``path``) on a malformed region or unknown contig.
    """
    region = region.strip()
    contig, start, end = region, None, None
    whole_is_name = contigs is not None and region in set(contigs)
    m = None if whole_is_name else _REGION_RE.match(region)
    if m:
        contig = m.group("contig")
        start = int(m.group("start").replace(",", ""))
        if start < 1:
            raise InputError(path, f"region {region!r}: start must be >= 1 (1-based)")
        start -= 1
        if m.group("end") is not None:
            end = int(m.group("end").replace(",", ""))
            if end <= start:
                raise InputError(path, f"region {region!r}: end is before start")
    if contigs is not None:
        hit = match_contig(contig, contigs)
        if hit is None:
            few = ", ".join(list(contigs)[:8])
            raise InputError(path, f"region {region!r}: contig {contig!r} not in the file (contigs: {few}...)")
        contig = hit
    return contig, start, end


def open_alignments(path: PathLike, reference: Optional[PathLike] = None, need_index: bool = False):
    """Open a BAM/CRAM/SAM with pysam. With ``need_index``, a missing index is
    built (``pysam.index``) when the folder is writable, else InputError."""
    import pysam

    quiet_htslib()
    p = Path(path)
    check_input_file(p, "BAM/CRAM file")
    kw = {}
    if reference is not None:
        if not Path(reference).exists():
            raise InputError(reference, "no such file (reference for CRAM)")
        kw["reference_filename"] = str(reference)
    try:
        af = pysam.AlignmentFile(str(p), "r", check_sq=False, **kw)
    except (ValueError, OSError) as e:
        raise InputError(p, f"not a readable BAM/CRAM/SAM file ({e})") from None
    if reference is not None and not af.is_cram:  # never silently ignored
        kind = "BAM" if af.is_bam else "SAM"
        af.close()
        raise InputError(reference, f"--reference applies to CRAM input only: {p} is a {kind} file, whose "
                                    f"reads carry their own sequences (drop --reference)")
    if need_index and not af.has_index():
        af.close()
        if not _dir_writable(p.parent):
            raise InputError(p, "no index (.bai/.csi/.crai) and the folder is not writable to build one; "
                                "run `samtools index` on it or copy it somewhere writable")
        try:
            pysam.index(str(p))
        except (pysam.SamtoolsError, OSError) as e:
            raise InputError(p, f"cannot build an index (is it coordinate-sorted?): {e}") from None
        af = pysam.AlignmentFile(str(p), "r", check_sq=False, **kw)
        if not af.has_index():
            raise InputError(p, "index could not be loaded after building it")
    return af


def iter_reads(
    path: PathLike,
    region: Optional[str] = None,
    reference: Optional[PathLike] = None,
    min_mapq: int = 0,
    skip_unmapped: bool = True,
    skip_secondary: bool = True,
    skip_supplementary: bool = True,
    skip_duplicates: bool = True,
    skip_qcfail: bool = True,
    original_orientation: bool = False,
) -> Iterator[Read]:
    """Yield :class:`Read` records of a BAM/CRAM/SAM, streaming.

    region: samtools-style ``"chr1:100-200"`` (1-based inclusive); needs an
        index, built if missing and the folder is writable. None: whole file
        in file order (unmapped reads included when not skipped), no index.
    reference: FASTA for CRAM decoding.
    min_mapq: applies to mapped reads. Reads without a stored SEQ ('*') are
    skipped. ``original_orientation`` reverse-complements reverse-strand reads
    back to the sequenced orientation.
    """
    af = open_alignments(path, reference, need_index=region is not None)
    try:
        if region is not None:
            contig, start, end = parse_region(region, af.references, path)
            it = af.fetch(contig, start, end)
        else:
            it = af.fetch(until_eof=True)
        n = 0
        try:
            for r in it:
                n += 1
                if r.is_unmapped:
                    if skip_unmapped:
                        continue
                else:
                    if r.mapping_quality < min_mapq:
                        continue
                if skip_secondary and r.is_secondary:
                    continue
                if skip_supplementary and r.is_supplementary:
                    continue
                if skip_duplicates and r.is_duplicate:
                    continue
                if skip_qcfail and r.is_qcfail:
                    continue
                seq = r.query_sequence
                if not seq:
                    continue
                if r.is_unmapped:
                    strand, s, e = ".", -1, -1
                else:
                    strand = "-" if r.is_reverse else "+"
                    s, e = r.reference_start, r.reference_end
                    if original_orientation and r.is_reverse:
                        seq = reverse_complement_str(seq)
                yield Read(
                    name=r.query_name,
                    contig=None if r.is_unmapped else r.reference_name,
                    start=s, end=e, strand=strand, sequence=seq,
                    mapq=r.mapping_quality, flag=r.flag,
                )
        except (OSError, ValueError) as e:
            raise InputError(path, f"error reading record {n + 1}: {e}") from None
    finally:
        af.close()
