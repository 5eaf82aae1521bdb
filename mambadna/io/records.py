"""The one adapter from any input to :class:`Record` streams: strings, token ids,
intervals of a genome, BED + genome, FASTA, BAM/CRAM reads, VCF + genome."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.io.files import PathLike
from mambadna.tokenizer import encode_input

INDEX_COLUMNS = ("name", "contig", "start", "end", "strand", "allele")


@dataclass
class Record:
    """One sequence to embed: token ids (L,) and its index row."""

    ids: np.ndarray
    name: str
    contig: str = ""
    start: int = 0
    end: int = 0
    strand: str = "+"
    allele: str = ""

    def row(self) -> Tuple[str, str, int, int, str, str]:
        return (self.name, self.contig, self.start, self.end, self.strand, self.allele)


def _encode(seq: Union[str, bytes], name: str, src: Optional[str] = None) -> np.ndarray:
    return encode_input(seq, src, name=name)


def as_genome(genome) -> Any:
    """A :class:`~mambadna.io.fasta.Genome` from a Genome, a path or a ``pyfaidx.Fasta``."""
    from mambadna.io.fasta import Genome

    if genome is None:
        return None
    return genome if isinstance(genome, Genome) else Genome(genome)


def _is_seqrecord(x) -> bool:
    from Bio.SeqRecord import SeqRecord

    return isinstance(x, SeqRecord)


def _is_faidx_sequence(x) -> bool:
    import pyfaidx

    return isinstance(x, pyfaidx.Sequence)


def _interval_parts(iv) -> Tuple[str, int, int, str, Optional[str]]:
    if hasattr(iv, "contig") and hasattr(iv, "start") and hasattr(iv, "end"):
        return iv.contig, int(iv.start), int(iv.end), getattr(iv, "strand", "+") or "+", getattr(iv, "name", None)
    if isinstance(iv, (tuple, list)) and 3 <= len(iv) <= 5:
        contig, start, end = iv[0], int(iv[1]), int(iv[2])
        strand = iv[3] if len(iv) > 3 and iv[3] else "+"
        name = iv[4] if len(iv) > 4 else None
        return str(contig), start, end, strand, name
    raise InputError(None, f"an interval must be an Interval or (contig, start, end[, strand[, name]]), got {iv!r}")


def interval_records(genome, intervals: Iterable) -> Iterator[Record]:
    """Records for intervals of a genome; strand '-' gives the reverse complement."""
    g = as_genome(genome)
    for iv in intervals:
        contig, start, end, strand, name = _interval_parts(iv)
        strand = "+" if strand == "." else strand
        name = None if name in ("", ".") else name
        if end <= start:
            raise InputError(g.path, f"empty interval {contig}:{start}-{end}")
        ids = g.fetch_ids(contig, start, end, strand=strand)
        yield Record(ids, name or interval_name(contig, start, end, strand), g.resolve_contig(contig),
                     start, end, strand)


def interval_name(contig: str, start: int, end: int, strand: str = "+") -> str:
    """The name of an unnamed interval: its 1-based region and strand, ``chr1:101-200(+)``."""
    return f"{contig}:{start + 1}-{end}({strand})"


GENBANK_SUFFIXES = {".gb": "genbank", ".gbk": "genbank", ".genbank": "genbank", ".gbff": "genbank",
                    ".embl": "embl", ".emb": "embl"}


def seq_format(path: PathLike) -> str:
    """"fasta", or "genbank" / "embl" by the file name (a trailing .gz ignored)."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return GENBANK_SUFFIXES.get(os.path.splitext(name)[1], "fasta")


def fasta_records(path: PathLike) -> Iterator[Record]:
    """Records of a FASTA file (plain or gzip), streamed; GenBank and EMBL
    flat files (by extension) are read with Biopython's ``Bio.SeqIO``."""
    fmt = seq_format(path)
    if fmt != "fasta":
        for rec in _seqio_records(path, fmt):
            yield _seqrecord(rec, os.fspath(path))
        return
    from mambadna.io.labeled import read_fasta_records

    for name, seq, _ in read_fasta_records(path):
        yield Record(_encode(seq, name, os.fspath(path)), name, "", 0, len(seq), "+")


def _seqio_records(path: PathLike, fmt: str):
    from Bio import SeqIO

    from mambadna.io.fasta import open_text

    try:
        with open_text(path) as fh:
            yield from SeqIO.parse(fh, fmt)
    except ValueError as e:  # Biopython's parse errors
        raise InputError(path, f"not a readable {fmt} file ({e})") from None


def _seqrecord(rec, src: Optional[str] = None) -> Record:
    """A Biopython ``SeqRecord`` as a Record."""
    seq = str(rec.seq)
    return Record(_encode(seq, rec.id, src), rec.id, "", 0, len(seq), "+")


def bam_records(path: PathLike, region: Optional[str] = None, reference: Optional[PathLike] = None,
                min_mapq: int = 0) -> Iterator[Record]:
    """Records of the reads of a BAM/CRAM (one row per read, stored orientation)."""
    from mambadna.io.bam import iter_reads

    for r in iter_reads(path, region=region, reference=reference, min_mapq=min_mapq):
        yield _read_record(r, os.fspath(path))


def _read_record(r, src: Optional[str] = None) -> Record:
    return Record(_encode(r.sequence, r.name, src), r.name, r.contig or "", int(r.start), int(r.end),
                  r.strand or ".")


def _variant_records(w) -> Tuple[Record, Record]:
    vid = w.id if w.id not in (None, ".", "") else f"{w.contig}:{w.pos}"
    name = f"{vid}:{w.ref}>{w.alt}"
    start = int(w.pos) - 1 - int(w.var_start)
    n = len(w.ref_ids)
    return (Record(np.asarray(w.ref_ids), name, w.contig, start, start + n, "+", "ref"),
            Record(np.asarray(w.alt_ids), name, w.contig, start, start + len(w.alt_ids), "+", "alt"))


def variant_records(vcf: PathLike, genome, window: int = 1024, skip_ref_mismatch: bool = False) -> Iterator[Record]:
    """Two records per ALT allele of a VCF: the reference window and the
    window with the allele applied (allele column "ref" / "alt")."""
    from mambadna.io.vcf import iter_variant_windows

    for w in iter_variant_windows(vcf, as_genome(genome), window=window, skip_ref_mismatch=skip_ref_mismatch):
        yield from _variant_records(w)


def _object_records(items: Iterable, genome) -> Iterator[Record]:
    g = None
    for i, x in enumerate(items):
        if isinstance(x, Record):
            yield x
        elif isinstance(x, (str, bytes)):
            ids = _encode(x, f"sequence {i}")
            yield Record(ids, f"seq{i}", "", 0, len(ids))
        elif isinstance(x, (np.ndarray, torch.Tensor)):
            ids = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
            if ids.ndim != 1:
                raise InputError(None, f"item {i}: token array must be 1-D, got shape {ids.shape}")
            yield Record(ids, f"seq{i}", "", 0, len(ids))
        elif _is_seqrecord(x):
            yield _seqrecord(x)
        elif _is_faidx_sequence(x):
            ids = _encode(x.seq, x.fancy_name or x.name)
            start = int(x.start or 1) - 1
            yield Record(ids, x.fancy_name or x.name, x.name, start, start + len(ids), "-" if x.comp else "+")
        elif hasattr(x, "ref_ids") and hasattr(x, "alt_ids"):
            yield from _variant_records(x)
        elif hasattr(x, "sequence") and hasattr(x, "name"):
            yield _read_record(x)
        elif hasattr(x, "contig") or isinstance(x, (tuple, list)):
            if genome is None:
                raise InputError(None, f"item {i}: intervals need a genome (genome=...)")
            g = g or as_genome(genome)
            yield from interval_records(g, [x])
        else:
            raise InputError(None, f"item {i}: cannot embed an object of type {type(x).__name__}")


def iter_records(inputs=None, *, genome=None, intervals=None, bed: Optional[PathLike] = None,
                 fasta: Optional[PathLike] = None, bam: Optional[PathLike] = None,
                 region: Optional[str] = None, vcf: Optional[PathLike] = None, window: int = 1024,
                 min_mapq: int = 0, skip_ref_mismatch: bool = False) -> Iterator[Record]:
    """Turn any supported input into a stream of :class:`Record`.

    Exactly one source: ``inputs`` (a string, token ids, a list of strings /
    id arrays / intervals / reads / variant windows, or a Genome together with
    ``intervals`` or ``bed``), ``fasta``, ``bed`` + ``genome``, ``bam`` (+
    ``region``), or ``vcf`` + ``genome`` (+ ``window``).
    """
    from mambadna.io.fasta import Genome

    if isinstance(inputs, Genome):
        genome, inputs = inputs, None
    sources = [n for n, v in (("inputs", inputs), ("intervals", intervals), ("bed", bed), ("fasta", fasta),
                              ("bam", bam), ("vcf", vcf)) if v is not None]
    if len(sources) != 1:
        raise InputError(None, "give exactly one input: sequences, intervals (with a genome), a BED "
                               f"(with a genome), a FASTA, a BAM or a VCF (with a genome); got {sources or 'none'}")
    if bed is not None or vcf is not None or intervals is not None:
        if genome is None:
            raise InputError(None, f"{sources[0]} input needs a reference genome (genome=... / --reference)")
    if inputs is not None:
        if isinstance(inputs, (str, bytes, np.ndarray, torch.Tensor)):
            arr = inputs
            if isinstance(arr, (np.ndarray, torch.Tensor)) and arr.ndim == 2:
                return _object_records(list(arr), genome)
            return _object_records([arr], genome)
        return _object_records(inputs, genome)
    if intervals is not None:
        return interval_records(genome, intervals)
    if bed is not None:
        from mambadna.io.bed import read_bed

        g = as_genome(genome)
        return interval_records(g, read_bed(bed, g))
    if fasta is not None:
        return fasta_records(fasta)
    if bam is not None:
        return bam_records(bam, region=region, reference=genome if isinstance(genome, (str, os.PathLike)) else
                           (genome.path if genome is not None else None), min_mapq=min_mapq)
    return variant_records(vcf, genome, window=window, skip_ref_mismatch=skip_ref_mismatch)


def is_single(inputs) -> bool:
    if isinstance(inputs, (str, bytes)):
        return True
    return isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 1


def index_frame(rows: Sequence[Tuple]):
    """Index rows -> pandas DataFrame with columns name, contig, start, end, strand, allele."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(INDEX_COLUMNS))
    return df.astype({"start": "int64", "end": "int64"})
