"""Labeled sequence sets as users have them: one FASTA per class, a CSV/TSV
of sequence and label, or a BED with a label column plus a reference.
Labels are class names, or numbers for regression (``numeric=True``)."""
from __future__ import annotations

import csv
import io
import math
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mambadna.errors import InputError
from mambadna.io.files import check_input_file
from mambadna.io.fasta import Genome, open_text
from mambadna.tokenizer import TokenizationError, encode
from mambadna.io.files import PathLike


MULTILABEL_SEP = ";"


@dataclass
class LabeledSet:
    """A labeled sequence set.

    names: (n,) record names; sequences: (n,) upper-case strings;
    labels: (n,) int64 class indices into ``classes`` (for multi-label data:
    the first label of each record); classes: class names;
    multilabel: (n, n_classes) bool matrix when any record has several labels
    (``;``-separated in a table), else None.
    values: (n,) float64 targets of a numeric (regression) set, else None;
    its ``classes`` is then ``[label column name]`` and ``labels`` all 0.
    """

    names: List[str]
    sequences: List[str]
    labels: np.ndarray
    classes: List[str]
    multilabel: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.sequences)

    def subset(self, idx: Sequence[int]) -> "LabeledSet":
        """Records at ``idx`` (same classes)."""
        idx = np.asarray(idx, dtype=np.int64)
        return LabeledSet([self.names[i] for i in idx], [self.sequences[i] for i in idx],
                          self.labels[idx], list(self.classes),
                          None if self.multilabel is None else self.multilabel[idx],
                          None if self.values is None else self.values[idx])


def _validate(seq: str, path: str, where: str) -> str:
    if not seq:
        raise InputError(path, f"{where}: empty sequence")
    try:
        encode(seq, name=where)
    except TokenizationError as e:
        raise InputError(path, f"forbidden character in sequence: {e}") from None
    return seq.upper()


def read_fasta_records(path: PathLike) -> Iterator[Tuple[str, str, int]]:
    """Yield ``(name, sequence, header_line)`` from a FASTA (plain or gzip).
    Sequences are validated with the tokenizer (A C G T N, IUPAC, U; any
    case); InputError names the file, record and line on anything else."""
    path = os.fspath(path)
    check_input_file(path, "FASTA file")
    name, chunks, hline, n = None, [], 0, 0
    try:
        with open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if name is not None:
                        n += 1
                        yield name, _validate("".join(chunks), path, f"record {name!r} (line {hline})"), hline
                    parts = line[1:].split()
                    name, chunks, hline = (parts[0] if parts else f"record{n + 1}"), [], lineno
                elif line.startswith(";"):
                    continue
                else:
                    if name is None:
                        raise InputError(path, f"line {lineno}: not a FASTA file (sequence before the "
                                               f"first '>' header)")
                    chunks.append(line)
            if name is not None:
                n += 1
                yield name, _validate("".join(chunks), path, f"record {name!r} (line {hline})"), hline
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if n == 0:
        raise InputError(path, "no FASTA records")


def _class_index(values: List[str], src: str) -> Tuple[np.ndarray, List[str], Optional[np.ndarray]]:
    multi = any(MULTILABEL_SEP in v for v in values)
    split = [[p.strip() for p in v.split(MULTILABEL_SEP) if p.strip()] if multi else [v] for v in values]
    uniq = sorted({p for ps in split for p in ps})
    if all(_is_number(u) for u in uniq):
        uniq = sorted(uniq, key=float)
    if len(uniq) < 2:
        raise InputError(src, f"only one class ({uniq[0] if uniq else 'none'!r}); a classifier needs "
                              f"at least two")
    pos = {c: i for i, c in enumerate(uniq)}
    labels = np.asarray([pos[ps[0]] for ps in split], dtype=np.int64)
    ml = None
    if multi:
        ml = np.zeros((len(values), len(uniq)), dtype=bool)
        for i, ps in enumerate(split):
            ml[i, [pos[p] for p in ps]] = True
    return labels, uniq, ml


def _numeric_set(names: List[str], seqs: List[str], vals: List[str], where: List[str], src: str,
                 column: str) -> LabeledSet:
    """A regression set: every label must parse as a finite number."""
    out = np.empty(len(vals), dtype=np.float64)
    for i, (v, w) in enumerate(zip(vals, where)):
        try:
            x = float(v)
        except ValueError:
            raise InputError(src, f"{w}: label {v!r} is not a number (regression needs a numeric "
                                  f"'{column}' column)") from None
        if not math.isfinite(x):
            raise InputError(src, f"{w}: label {v!r} is not a finite number")
        out[i] = x
    if len(out) and np.ptp(out) == 0:
        raise InputError(src, f"all {len(out)} labels are equal ({vals[0]}); nothing to regress")
    return LabeledSet(names, seqs, np.zeros(len(out), dtype=np.int64), [column], None, out)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _load_fastas(class_fastas: Mapping[str, PathLike]) -> LabeledSet:
    if len(class_fastas) < 2:
        only = next(iter(class_fastas), None)
        raise InputError(None if only is None else class_fastas[only],
                         f"only one class ({only!r}); give at least two --class NAME=FILE")
    names, seqs, labels = [], [], []
    classes = list(class_fastas)
    for ci, (cls, p) in enumerate(class_fastas.items()):
        for name, seq, _ in read_fasta_records(p):
            names.append(name)
            seqs.append(seq)
            labels.append(ci)
    return LabeledSet(names, seqs, np.asarray(labels, dtype=np.int64), classes)


def _load_table(path: PathLike, sequence_column: str = "sequence", label_column: str = "label",
                numeric: bool = False) -> LabeledSet:
    path = os.fspath(path)
    check_input_file(path, "CSV/TSV file")
    try:
        with open_text(path) as fh:
            text = fh.read()
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot read: {e}") from None
    text = text.removeprefix("\ufeff").removeprefix("\u00ef\u00bb\u00bf")
    lines = text.splitlines()
    first = next((l for l in lines if l.strip()), "")
    if not first:
        raise InputError(path, "empty file")
    delim = "\t" if "\t" in first else ("," if "," in first else (";" if ";" in first else "\t"))
    reader = csv.reader(io.StringIO(text), delimiter=delim)
    header = None
    names, seqs, vals, where = [], [], [], []
    for lineno, row in enumerate(reader, 1):
        if not row or all(not c.strip() for c in row):
            continue
        if header is None:
            header = [c.strip().lower() for c in row]
            missing = [c for c in (sequence_column, label_column) if c.lower() not in header]
            if missing:
                raise InputError(path, f"missing column(s) {', '.join(missing)} in the header line "
                                       f"(found: {', '.join(header)}); a header with "
                                       f"'{sequence_column}' and '{label_column}' is required")
            si, li = header.index(sequence_column.lower()), header.index(label_column.lower())
            ni = header.index("name") if "name" in header else (header.index("id") if "id" in header else None)
            continue
        if len(row) <= max(si, li):
            raise InputError(path, f"line {lineno}: {len(row)} columns, the header has {len(header)}")
        name = row[ni].strip() if ni is not None and ni < len(row) and row[ni].strip() else f"line{lineno}"
        seq = _validate(row[si].strip(), path, f"line {lineno} ({name})")
        lab = row[li].strip()
        if not lab:
            raise InputError(path, f"line {lineno} ({name}): empty label")
        names.append(name)
        seqs.append(seq)
        vals.append(lab)
        where.append(f"line {lineno} ({name})")
    if not seqs:
        raise InputError(path, "no data rows after the header")
    if numeric:
        return _numeric_set(names, seqs, vals, where, path, label_column)
    labels, classes, ml = _class_index(vals, path)
    return LabeledSet(names, seqs, labels, classes, ml)


def _load_bed(bed: PathLike, reference: PathLike, label_column: Optional[str] = None,
              numeric: bool = False) -> LabeledSet:
    from mambadna.io.bed import read_bed_table

    genome = reference if isinstance(reference, Genome) else Genome(reference)
    header, ivs = read_bed_table(bed, genome)
    bed = os.fspath(bed)
    col = 3  # 4th column (name) by default
    want = label_column or "label"
    if header is not None and want.lower() in [h.lower() for h in header]:
        col = [h.lower() for h in header].index(want.lower())
    elif label_column is not None:
        raise InputError(bed, f"no {label_column!r} column in the header "
                              f"({', '.join(header) if header else 'no header line'})")
    names, seqs, vals, where = [], [], [], []
    for iv in ivs:
        cols = [iv.contig, str(iv.start), str(iv.end), iv.name, iv.score, iv.strand, *iv.extra]
        if col >= len(cols) or cols[col] in (None, ""):
            raise InputError(bed, f"line {iv.line}: no label (column {col + 1})")
        seq = genome.fetch(iv.contig, iv.start, iv.end, strand="-" if iv.strand == "-" else "+", pad=False)
        names.append(f"{iv.contig}:{iv.start}-{iv.end}({iv.strand})")
        seqs.append(_validate(seq, bed, f"line {iv.line}"))
        vals.append(cols[col])
        where.append(f"line {iv.line}")
    if numeric:
        return _numeric_set(names, seqs, vals, where, bed, want)
    labels, classes, ml = _class_index(vals, bed)
    return LabeledSet(names, seqs, labels, classes, ml)


def load_labeled(class_fastas: Optional[Mapping[str, PathLike]] = None, table: Optional[PathLike] = None,
                 bed: Optional[PathLike] = None, reference: Optional[Union[PathLike, Genome]] = None,
                 label_column: Optional[str] = None, numeric: bool = False) -> LabeledSet:
    """Load a labeled set from exactly one source.

    class_fastas: {class name: FASTA path}, classes in dict order.
    table: CSV/TSV (delimiter auto-detected) with a header containing
        ``sequence`` and ``label`` (or ``label_column``); optional ``name``/``id``.
        ``;`` in a label makes the set multi-label.
    bed + reference: BED intervals (strand honoured) with the label in the
        4th column, or in the column named ``label`` of a header line.
    Classes of tables/BEDs are sorted (numerically when all numbers).
    numeric: the labels are regression targets (``values``); a label that is
    not a finite number raises InputError naming the file and line.
    Raises InputError: one class only, forbidden characters (file + record),
    empty file, missing columns, BED interval beyond a contig's end.
    """
    given = [x is not None for x in (class_fastas, table, bed)]
    if sum(given) != 1:
        raise InputError(None, "give exactly one labeled source: class FASTAs, a CSV/TSV table, "
                               "or a BED with a reference")
    if class_fastas is not None:
        if numeric:
            src = next(iter(class_fastas.values()), None)
            raise InputError(src, "regression needs numeric labels: give a CSV/TSV table or a labeled BED, "
                                  "not one FASTA per class")
        return _load_fastas(class_fastas)
    if table is not None:
        return _load_table(table, label_column=label_column or "label", numeric=numeric)
    if reference is None:
        raise InputError(bed, "a BED of labeled intervals needs a reference FASTA (--reference)")
    return _load_bed(bed, reference, label_column, numeric=numeric)


def stratified_split(labels: np.ndarray, fractions: Sequence[float] = (0.8, 0.2),
                     seed: int = 0) -> Tuple[np.ndarray, ...]:
    """Split indices ``0..n-1`` into len(fractions) disjoint sorted int64 arrays
    with class proportions preserved (scikit-learn, seeded). ``fractions``
    must sum to 1, e.g. (0.8, 0.2) or (0.7, 0.1, 0.2). Labels (n,) int, or an
    (n, k) multi-label matrix (stratified on the first label). Falls back to a
    seeded unstratified split when a class is too small to stratify.
    """
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)
    if y.ndim == 2:
        y = y.argmax(axis=1)
    fr = [float(f) for f in fractions]
    if len(fr) < 2 or any(f <= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 2 positive numbers summing to 1, got {fractions}")
    idx = np.arange(len(y))
    parts: List[np.ndarray] = []
    rest, rest_frac = idx, 1.0
    for k, f in enumerate(fr[:-1]):
        take = f / rest_frac
        n_take = int(round(take * len(rest)))
        if n_take <= 0 or n_take >= len(rest):
            raise ValueError(f"too few samples ({len(y)}) for fractions {fractions}")
        try:
            a, b = train_test_split(rest, train_size=n_take, random_state=seed + k, stratify=y[rest])
        except ValueError:
            a, b = train_test_split(rest, train_size=n_take, random_state=seed + k, stratify=None)
        parts.append(np.sort(a))
        rest, rest_frac = b, rest_frac - f
    parts.append(np.sort(rest))
    return tuple(p.astype(np.int64) for p in parts)
