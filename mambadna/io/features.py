"""Per-base labels from a feature table: GFF3, GenBank or BED over a reference.

``load_token_labels(path, reference, feature_types)`` paints, for every
contig, one class index per base: 0 is the background class (``"other"``),
then one class per feature type (GFF3 column 3 / GenBank feature key, e.g.
``CDS``) or per BED name. Where features of different classes overlap, the
type listed first wins.

* GFF3 (``.gff``, ``.gff3``, optionally gzipped): a small strict parser of the
  nine tab-separated columns (1-based inclusive coordinates); a ``##FASTA``
  section ends the features. Needs ``reference``.
* GenBank (``.gb``, ``.gbk``, ``.gbff``, ``.genbank``): read with Biopython's
  ``Bio.SeqIO``; joined locations label each of their parts. The sequence
  comes from the file itself unless ``reference`` is given.
* BED: the 4th column names the class (``feature`` when absent). Needs
  ``reference``.

Every problem raises :class:`InputError` naming the file (and line): a feature
on a contig the reference lacks, a feature beyond a contig's end, no feature of
the requested types, an unreadable file.
"""
from __future__ import annotations

import os
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from mambadna.errors import InputError
from mambadna.io.fasta import Genome, open_text
from mambadna.io.files import PathLike, check_input_file

BACKGROUND = "other"
DEFAULT_TYPES = ("CDS",)
_GFF_EXT = (".gff", ".gff3")
_GB_EXT = (".gb", ".gbk", ".gbff", ".genbank", ".gbf")
_BED_EXT = (".bed",)


@dataclass
class TokenTrack:
    """Per-base labels of a set of contigs.

    classes: [background, *feature classes]; labels: contig -> (L,) uint8
    class indices; sequences: contig -> sequence str when the feature file
    carried them (GenBank without ``reference``), else None (read the genome);
    genome: the reference (None for a self-contained GenBank file);
    counts: features painted per class.
    """

    source: str
    classes: List[str]
    labels: Dict[str, np.ndarray]
    sequences: Optional[Dict[str, str]]
    genome: Optional[Genome]
    counts: Dict[str, int]

    def fetch_ids(self, contig: str, start: int, end: int) -> np.ndarray:
        """Token ids of ``contig[start:end]``."""
        from mambadna.tokenizer import encode

        if self.sequences is not None:
            return encode(self.sequences[contig][start:end], name=f"{contig}:{start}-{end}")
        return self.genome.fetch_ids(contig, start, end, pad=False)


def feature_format(path: PathLike) -> str:
    """'gff', 'genbank' or 'bed' from the file name (gzip suffix ignored), else
    from the first non-empty line."""
    name = os.fspath(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(_GFF_EXT):
        return "gff"
    if name.endswith(_GB_EXT):
        return "genbank"
    if name.endswith(_BED_EXT):
        return "bed"
    check_input_file(path, "feature file")
    try:
        with open_text(path) as fh:
            first = next((l for l in fh if l.strip()), "")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if first.startswith("##gff-version"):
        return "gff"
    if first.startswith("LOCUS"):
        return "genbank"
    raise InputError(path, "unknown feature file format: expected GFF3 (.gff/.gff3), GenBank "
                           "(.gb/.gbk/.gbff) or BED (.bed)")


def _resolve(genome: Genome, seqid: str, path: str, where: str) -> str:
    try:
        return genome.resolve_contig(seqid)
    except InputError:
        few = ", ".join(genome.contigs[:5]) + (", ..." if len(genome.contigs) > 5 else "")
        raise InputError(path, f"{where}: contig {seqid!r} is not in the reference {genome.path} "
                               f"(its contigs: {few})") from None


def _beyond(path: str, where: str, what: str, contig: str, end: int, L: int) -> InputError:
    return InputError(path, f"{where}: {what} ends at {end}, beyond the end of contig {contig!r} ({L} bp)")


def _read_gff(path: str, genome: Genome, types: Sequence[str]):
    """(features, type counts): (class name, contig, start0, end) of the wanted
    feature types, and how many lines of each type the file has."""
    wanted = set(types)
    seen_types: Dict[str, int] = {}
    feats: List[Tuple[str, str, int, int]] = []
    try:
        with open_text(path) as fh:
            for lineno, raw in enumerate(fh, 1):
                line = raw.rstrip("\r\n")
                if not line.strip():
                    continue
                if line.startswith("##FASTA"):
                    break
                if line.startswith("#"):
                    continue
                cols = line.split("\t")
                if len(cols) != 9:
                    raise InputError(path, f"line {lineno}: a GFF3 feature line has 9 tab-separated "
                                           f"columns, found {len(cols)}")
                ftype = cols[2]
                seen_types[ftype] = seen_types.get(ftype, 0) + 1
                if ftype not in wanted:
                    continue
                try:
                    start, end = int(cols[3]), int(cols[4])
                except ValueError:
                    raise InputError(path, f"line {lineno}: start/end must be integers, got "
                                           f"{cols[3]!r} and {cols[4]!r}") from None
                if start < 1 or end < start:
                    raise InputError(path, f"line {lineno}: bad coordinates {start}-{end} (1-based, "
                                           f"start <= end)")
                where = f"line {lineno}"
                contig = _resolve(genome, urllib.parse.unquote(cols[0]), path, where)
                L = genome.lengths[contig]
                if end > L:
                    raise _beyond(path, where, f"{ftype} {start}-{end}", contig, end, L)
                feats.append((ftype, contig, start - 1, end))
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    return feats, seen_types


def _read_bed(path: str, genome: Genome, types: Optional[Sequence[str]]):
    from mambadna.io.bed import read_bed_table

    _, ivs = read_bed_table(path, genome)  # contigs and contig ends checked there (file + line)
    for iv in ivs:
        name = iv.name if iv.name not in (None, "", ".") else "feature"
        if types is None or name in types:
            yield name, iv.contig, iv.start, iv.end


def _read_genbank(path: str, genome: Optional[Genome], types: Sequence[str], seqs: Dict[str, str],
                  lengths: Dict[str, int]):
    from Bio import SeqIO
    from Bio.Seq import UndefinedSequenceError

    wanted = set(types)
    try:
        with open_text(path) as fh:
            for k, rec in enumerate(SeqIO.parse(fh, "genbank"), 1):
                rid = rec.id if rec.id and rec.id != "<unknown id>" else rec.name
                where = f"record {rid!r}"
                if genome is not None:
                    contig = _resolve(genome, rid, path, where)
                    L = genome.lengths[contig]
                    if len(rec) and len(rec) != L:
                        raise InputError(path, f"{where}: {len(rec)} bp, but contig {contig!r} of "
                                               f"{genome.path} has {L} bp")
                else:
                    contig = rid
                    try:
                        seqs[contig] = str(rec.seq)
                    except UndefinedSequenceError:
                        raise InputError(path, f"{where} has no sequence; give the reference FASTA "
                                               f"(--reference)") from None
                    L = len(seqs[contig])
                lengths[contig] = L
                for feat in rec.features:
                    if feat.type not in wanted or feat.location is None:
                        continue
                    for part in feat.location.parts:
                        s, e = int(part.start), int(part.end)
                        if e > L:
                            raise _beyond(path, where, f"{feat.type} {s + 1}-{e}", contig, e, L)
                        if e > s:
                            yield feat.type, contig, s, e
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    except ValueError as e:
        raise InputError(path, f"not a valid GenBank file ({e})") from None


def load_token_labels(path: PathLike, reference: Optional[Union[PathLike, Genome]] = None,
                      feature_types: Optional[Sequence[str]] = None) -> TokenTrack:
    """Per-base labels of ``path`` (GFF3 / GenBank / BED) over ``reference``.

    feature_types: the classes, in priority order (default: ``CDS`` for GFF3
    and GenBank; every BED name). Contigs without a feature are all background.
    """
    path_s = os.fspath(path)
    fmt = feature_format(path_s)
    check_input_file(path_s, "feature file")
    genome: Optional[Genome] = None
    if reference is not None:
        genome = reference if isinstance(reference, Genome) else Genome(reference)
    elif fmt != "genbank":
        raise InputError(path_s, f"per-base labels from a {'GFF3' if fmt == 'gff' else 'BED'} file need the "
                                 f"reference FASTA (--reference)")
    types = list(feature_types) if feature_types else (None if fmt == "bed" else list(DEFAULT_TYPES))
    seqs: Dict[str, str] = {}
    lengths: Dict[str, int] = dict(genome.lengths) if genome is not None else {}
    if fmt == "gff":
        feats, seen = _read_gff(path_s, genome, types)
    elif fmt == "bed":
        feats = list(_read_bed(path_s, genome, types))
        seen = {}
        for f in feats:
            seen[f[0]] = seen.get(f[0], 0) + 1
    else:
        feats = list(_read_genbank(path_s, genome, types, seqs, lengths))
        seen = {}
    if types is None:
        types = sorted({f[0] for f in feats})
    if not feats:
        have = ", ".join(f"{t} ({n})" for t, n in sorted(seen.items(), key=lambda kv: -kv[1])[:8])
        raise InputError(path_s, f"no features of type {', '.join(types) if types else '(any)'}"
                                 + (f"; the file has: {have}" if have else ""))
    if BACKGROUND in types:
        raise InputError(path_s, f"{BACKGROUND!r} is the background class; it cannot be a feature type")
    classes = [BACKGROUND] + list(types)
    if len(classes) > 255:
        raise InputError(path_s, f"{len(classes)} classes; at most 254 feature types")
    index = {t: i + 1 for i, t in enumerate(types)}
    labels = {c: np.zeros(L, dtype=np.uint8) for c, L in lengths.items()}
    counts = {t: 0 for t in types}
    # paint the lowest-priority type first so the type listed first wins where they overlap
    for ftype, contig, s, e in sorted(feats, key=lambda f: -index[f[0]]):
        labels[contig][s:e] = index[ftype]
        counts[ftype] += 1
    return TokenTrack(path_s, classes, labels, seqs if genome is None else None, genome, counts)


def token_windows(track: TokenTrack, window: int, min_length: Optional[int] = None
                  ) -> Tuple[List[str], List[np.ndarray], List[np.ndarray]]:
    """Cut every contig into consecutive non-overlapping windows of ``window``
    bases (a shorter last window is kept when at least ``min_length``, default
    window // 2). Returns (names 'contig:start-end', token ids, per-base labels
    int64), in genome order."""
    if window < 1:
        raise InputError(None, f"--window must be >= 1, got {window}")
    min_length = window // 2 if min_length is None else min_length
    names, ids, labs = [], [], []
    for contig, lab in track.labels.items():
        L = len(lab)
        for s in range(0, L, window):
            e = min(L, s + window)
            if e - s < max(1, min_length):
                continue
            names.append(f"{contig}:{s}-{e}")
            ids.append(track.fetch_ids(contig, s, e))
            labs.append(lab[s:e].astype(np.int64))
    if not names:
        raise InputError(track.source, f"no contig is as long as --window {window} // 2")
    return names, ids, labs
