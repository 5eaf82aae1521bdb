"""Pretraining data: fixed-length genome windows (one genome or several) and BAM reads as map-style datasets.

Every item is a deterministic function of ``(seed, split, index)``, so
resuming is "start at sample index k" (e.g. ``DataLoader(ds, sampler=range(k, n))``),
DDP ranks take different indices, and DataLoader workers need no coordination.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.io.fasta import Genome
from mambadna.io.bed import Spans, intersect_spans, merge_spans, read_bed, spans_from_intervals, subtract_spans
from mambadna.tokenizer import N as N_ID
from mambadna.tokenizer import PAD, encode, reverse_complement
from mambadna.io.files import PathLike


SPLITS = {"train": 0, "val": 1}


@dataclass
class SamplerConfig:
    """Window sampling settings.

    seq_len: window length in bases. max_n_frac: windows with a larger
    fraction of N are redrawn (up to ``max_tries`` times; the draw with the
    fewest N is kept if all fail). regions: BED of regions to sample from.
    Validation hold-out, combinable: ``val_contigs`` (whole contigs),
    ``val_bed`` (BED intervals), ``val_fraction`` (the last fraction of every
    contig, for single-contig genomes). rc_augment: reverse-complement half of
    the training windows (deterministic coin per index).
    """

    seq_len: int
    seed: int = 0
    max_n_frac: float = 0.1
    regions: Optional[str] = None
    val_contigs: Tuple[str, ...] = ()
    val_bed: Optional[str] = None
    val_fraction: float = 0.0
    rc_augment: bool = False
    max_tries: int = 32

    def __post_init__(self):
        if isinstance(self.val_contigs, str):
            self.val_contigs = tuple(c for c in self.val_contigs.split(",") if c)
        else:
            self.val_contigs = tuple(self.val_contigs or ())
        if int(self.seq_len) < 1:
            raise InputError(None, f"seq_len must be >= 1, got {self.seq_len}")
        if not 0.0 <= float(self.max_n_frac) <= 1.0:
            raise InputError(None, f"max_n_frac must be in [0, 1], got {self.max_n_frac}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise InputError(None, f"val_fraction must be in [0, 1), got {self.val_fraction}")

    @property
    def has_val(self) -> bool:
        return bool(self.val_contigs or self.val_bed or self.val_fraction > 0)


def split_spans(genome: Genome, cfg: SamplerConfig) -> Tuple[Spans, Spans]:
    """Return ``(train_spans, val_spans)``: per contig, sorted disjoint
    (start, end) spans each split may sample from.

    Base = the ``regions`` BED (or whole contigs); val = base ∩ (val contigs ∪
    val BED ∪ last ``val_fraction`` of each contig); train = base − val.
    """
    whole: Spans = {c: [(0, L)] for c, L in genome.lengths.items()}
    base = spans_from_intervals(read_bed(cfg.regions, genome)) if cfg.regions else whole
    held: Spans = {}
    for name in cfg.val_contigs:
        try:
            c = genome.resolve_contig(name)
        except InputError as e:
            raise InputError(genome.path, f"unknown contig in val_contigs: {e.problem}") from None
        held.setdefault(c, []).append((0, genome.lengths[c]))
    if cfg.val_bed:
        for c, lst in spans_from_intervals(read_bed(cfg.val_bed, genome)).items():
            held.setdefault(c, []).extend(lst)
    if cfg.val_fraction > 0:
        for c, L in genome.lengths.items():
            n = int(round(L * cfg.val_fraction))
            if n > 0:
                held.setdefault(c, []).append((L - n, L))
    held = merge_spans(held)
    val = intersect_spans(base, held)
    train = subtract_spans(base, held)
    return train, val


class WindowDataset(torch.utils.data.Dataset):
    """Fixed-length genome windows, map-style and index-deterministic.

    ``WindowDataset(genome_path, cfg, split="train"|"val", num_samples=N)``;
    ``ds[i]`` -> ``torch.LongTensor (seq_len,)`` of token ids, a function of
    ``(cfg.seed, split, i)`` only. Windows lie inside the split's spans,
    chosen with probability proportional to usable length (span length −
    seq_len + 1; shorter spans are unusable).
    """

    def __init__(self, genome_path: Union[PathLike, Genome], cfg: SamplerConfig, split: str = "train",
                 num_samples: int = 1_000_000, cache_dir: Optional[PathLike] = None):
        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.cfg = cfg
        self.split = split
        self.num_samples = int(num_samples)
        self.genome = genome_path if isinstance(genome_path, Genome) else Genome(genome_path, cache_dir)
        seq_len = int(cfg.seq_len)
        if split == "val" and not cfg.has_val:
            raise InputError(None, "no validation split configured (set val_contigs, val_bed or val_fraction)")
        train, val = split_spans(self.genome, cfg)
        spans = train if split == "train" else val
        src = cfg.regions or self.genome.path
        if split == "train" and not spans:
            raise InputError(self.genome.path, "empty training split: nothing left after removing the "
                                               "validation contigs/regions")
        if split == "val" and not spans:
            raise InputError(cfg.val_bed or self.genome.path, "empty validation split: the validation "
                                                              "contigs/regions do not overlap the sampled regions")
        contigs, starts, usable, longest = [], [], [], 0
        for c, lst in spans.items():
            for s, e in lst:
                longest = max(longest, e - s)
                if e - s >= seq_len:
                    contigs.append(c)
                    starts.append(s)
                    usable.append(e - s - seq_len + 1)
        if not usable:
            what = "interval" if (cfg.regions or split == "val" or cfg.val_fraction or cfg.val_bed) else "contig"
            raise InputError(src, f"no {split} {what} as long as seq_len={seq_len} "
                                  f"(the longest is {longest} bp)")
        self.span_contigs: List[str] = contigs
        self.span_starts = np.asarray(starts, dtype=np.int64)
        self._cum = np.cumsum(np.asarray(usable, dtype=np.int64))
        self.total_usable = int(self._cum[-1])

    def __len__(self) -> int:
        return self.num_samples

    def locate(self, i: int) -> Tuple[str, int, str, float]:
        """The window of index ``i``: ``(contig, start, strand, n_frac)`` (0-based start)."""
        return self._draw(i)[:4]

    def describe(self, i: int) -> dict:
        """Where window ``i`` comes from: species (the file name), genome file,
        contig, start, end, strand."""
        contig, start, strand, nf = self.locate(i)
        return {"species": species_name(self.genome.path), "genome": str(self.genome.path), "contig": contig,
                "start": start, "end": start + int(self.cfg.seq_len), "strand": strand, "n_frac": nf}

    def _draw(self, i: int):
        cfg = self.cfg
        rng = np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, SPLITS[self.split], int(i)])
        flip = bool(cfg.rc_augment and self.split == "train" and rng.random() < 0.5)
        best = None
        L = int(cfg.seq_len)
        for _ in range(max(1, int(cfg.max_tries))):
            k = int(rng.integers(self.total_usable))
            j = int(np.searchsorted(self._cum, k, side="right"))
            off = k - (int(self._cum[j - 1]) if j else 0)
            contig, start = self.span_contigs[j], int(self.span_starts[j]) + off
            ids = self.genome.fetch_ids(contig, start, start + L, pad=False)
            nf = float(np.count_nonzero(ids == N_ID)) / L
            if best is None or nf < best[3]:
                best = (contig, start, ids, nf)
            if nf <= cfg.max_n_frac:
                break
        contig, start, ids, nf = best
        return contig, start, "-" if flip else "+", nf, ids

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} samples")
        if i < 0:
            i += self.num_samples
        _, _, strand, _, ids = self._draw(i)
        if strand == "-":
            ids = reverse_complement(ids)
        return torch.from_numpy(np.ascontiguousarray(ids).astype(np.int64))


GENOME_LIST_SUFFIXES = (".txt", ".list", ".tsv")


def expand_genomes(genome: Union[PathLike, Sequence[PathLike], None]) -> List[str]:
    """Genome paths from one path, several, or a list file (``.txt``/``.list``/
    ``.tsv``: one FASTA path per line, ``#`` comments; relative paths are taken
    from the list file's folder)."""
    if genome is None:
        return []
    items = [genome] if isinstance(genome, (str, os.PathLike)) else list(genome)
    out: List[str] = []
    for g in items:
        g = os.fspath(g)
        if g.lower().endswith(GENOME_LIST_SUFFIXES):
            from mambadna.io.files import check_input_file

            check_input_file(g, "genome list file")
            base = os.path.dirname(os.path.abspath(g))
            with open(g) as fh:
                for line in fh:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        path = line.split("\t")[0].strip()
                        out.append(path if os.path.isabs(path) else os.path.join(base, path))
            if not out:
                raise InputError(g, "genome list file names no FASTA")
        else:
            out.append(g)
    return out


def species_name(path: PathLike) -> str:
    """A short name for a genome file: its name without FASTA and compression
    suffixes (``GCF_000005845.2_ASM584v2_genomic.fna.gz`` -> ``GCF_000005845.2_ASM584v2_genomic``)."""
    name = os.path.basename(os.fspath(path))
    for suf in (".gz", ".bgz", ".fa", ".fna", ".fasta", ".fas", ".ffn"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
    return name or os.fspath(path)


class MultiGenomeDataset(torch.utils.data.Dataset):
    """Windows from several genomes, map-style and index-deterministic.

    Sample ``i`` comes from genome ``g`` with probability ``weights[g]``
    (default: the genome's usable length in this split, so every base of every
    genome is equally likely), then from that genome's :class:`WindowDataset`.
    Each genome holds out its own validation part (``val_fraction`` of every
    contig, its ``val_contigs``, ``val_bed`` intervals); a genome with no
    validation (or no training) part is left out of that split only.
    :meth:`describe` gives the species, contig and position of any window.
    """

    def __init__(self, genomes: Sequence[Union[PathLike, Genome]], cfg: SamplerConfig, split: str = "train",
                 num_samples: int = 1_000_000, weights: Optional[Sequence[float]] = None,
                 names: Optional[Sequence[str]] = None, cache_dir: Optional[PathLike] = None):
        import dataclasses

        if split not in SPLITS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not genomes:
            raise InputError(None, "no genome given")
        if cfg.regions and len(genomes) > 1:
            raise InputError(cfg.regions, "--regions applies to a single genome; with several genomes hold out "
                                          "validation with --val-fraction or --val-contigs")
        if weights is not None and len(weights) != len(genomes):
            raise InputError(None, f"{len(weights)} genome weights for {len(genomes)} genomes")
        if weights is not None and (any(w < 0 for w in weights) or not sum(weights) > 0):
            raise InputError(None, f"genome weights must be >= 0 with a positive sum, got {list(weights)}")
        gs = [g if isinstance(g, Genome) else Genome(g, cache_dir) for g in genomes]
        names = list(names) if names is not None else [species_name(g.path) for g in gs]
        if len(set(names)) != len(names):  # two files of the same name: number them
            names = [f"{n}#{k}" for k, n in enumerate(names)]
        # val contigs: each name must exist in at least one genome, and goes to the genomes that have it
        unknown = [c for c in cfg.val_contigs if not any(_has_contig(g, c) for g in gs)]
        if unknown:
            raise InputError(gs[0].path, f"unknown contig in val_contigs: {', '.join(unknown)} is in none of "
                                         f"the {len(gs)} genomes")
        self.cfg, self.split, self.num_samples = cfg, split, int(num_samples)
        self.parts: List[WindowDataset] = []
        self.names: List[str] = []
        keep_w: List[float] = []
        first_err: Optional[InputError] = None
        for k, g in enumerate(gs):
            gcfg = dataclasses.replace(cfg, val_contigs=tuple(c for c in cfg.val_contigs if _has_contig(g, c)))
            if split == "val" and not gcfg.has_val:
                continue
            try:
                part = WindowDataset(g, gcfg, split=split, num_samples=num_samples)
            except InputError as e:
                if "empty training split" in e.problem or "empty validation split" in e.problem:
                    first_err = first_err or e
                    continue
                raise
            self.parts.append(part)
            self.names.append(names[k])
            keep_w.append(float(weights[k]) if weights is not None else float(part.total_usable))
        if not self.parts:
            raise first_err or InputError(None, f"no {split} windows in any genome")
        w = np.asarray(keep_w, dtype=np.float64)
        if not w.sum() > 0:
            raise InputError(None, f"the genomes of the {split} split all have weight 0")
        self.weights = w / w.sum()
        self._cum = np.cumsum(self.weights)
        self._cum[-1] = 1.0

    def __len__(self) -> int:
        return self.num_samples

    def _genome_of(self, i: int) -> int:
        u = np.random.default_rng([int(self.cfg.seed) & 0xFFFFFFFF, SPLITS[self.split], int(i), 7]).random()
        return int(np.searchsorted(self._cum, u, side="right"))

    def locate(self, i: int) -> Tuple[str, int, str, float]:
        """The window of index ``i``: ``(contig, start, strand, n_frac)``, as
        :meth:`WindowDataset.locate` (the genome: :meth:`describe`)."""
        return self.parts[self._genome_of(i)].locate(i)

    def describe(self, i: int) -> dict:
        """Where window ``i`` comes from: species, genome file, contig, start,
        end, strand."""
        g = self._genome_of(i)
        contig, start, strand, nf = self.parts[g].locate(i)
        return {"species": self.names[g], "genome": str(self.parts[g].genome.path), "contig": contig,
                "start": start, "end": start + int(self.cfg.seq_len), "strand": strand, "n_frac": nf}

    def __getitem__(self, i: int) -> torch.Tensor:
        if not -self.num_samples <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for {self.num_samples} samples")
        if i < 0:
            i += self.num_samples
        return self.parts[self._genome_of(i)][i]


def _has_contig(genome: Genome, name: str) -> bool:
    try:
        genome.resolve_contig(name)
        return True
    except InputError:
        return False


class ReadsDataset(torch.utils.data.Dataset):
    """Reads of a BAM/CRAM as fixed-length sequences for pretraining.

    The filtered reads are loaded once into one uint8 array (memory ~ 1 byte
    per base; cap with ``max_reads``). ``ds[i]`` -> ``torch.LongTensor
    (seq_len,)``: read ``i`` cropped (at a deterministic offset from
    ``(seed, i)`` when longer) or right-padded with PAD=4.
    """

    def __init__(self, bam_path: PathLike, seq_len: int, seed: int = 0, region: Optional[str] = None,
                 reference: Optional[PathLike] = None, min_mapq: int = 0, max_reads: Optional[int] = None,
                 rc_augment: bool = False, original_orientation: bool = False, **filters):
        from mambadna.io.bam import iter_reads

        self.path = os.fspath(bam_path)
        self.seq_len = int(seq_len)
        self.seed = int(seed)
        self.rc_augment = rc_augment
        chunks, lengths = [], []
        for r in iter_reads(bam_path, region=region, reference=reference, min_mapq=min_mapq,
                            original_orientation=original_orientation, **filters):
            chunks.append(encode(r.sequence, name=r.name, lenient=True))
            lengths.append(len(r.sequence))
            if max_reads is not None and len(chunks) >= max_reads:
                break
        if not chunks:
            raise InputError(self.path, "no reads pass the filters"
                             + (f" in region {region}" if region else ""))
        self._data = np.concatenate(chunks)
        self._len = np.asarray(lengths, dtype=np.int64)
        self._off = np.concatenate([[0], np.cumsum(self._len)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self._len)

    def __getitem__(self, i: int) -> torch.Tensor:
        n = len(self._len)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} reads")
        i = i % n
        L, o = int(self._len[i]), int(self._off[i])
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 2, i])
        shift = int(rng.integers(L - self.seq_len + 1)) if L > self.seq_len else 0
        ids = self._data[o + shift: o + shift + min(L, self.seq_len)]
        if self.rc_augment and rng.random() < 0.5:
            ids = reverse_complement(ids)
        out = np.full(self.seq_len, PAD, dtype=np.int64)
        out[: len(ids)] = ids
        return torch.from_numpy(out)


def reads_dataset(bam_path: PathLike, seq_len: int, **kwargs) -> ReadsDataset:
    """Build a :class:`ReadsDataset` (for ``pretrain --bam``); kwargs as its constructor
    (seed, region, reference, min_mapq, max_reads, rc_augment, skip_* filters)."""
    return ReadsDataset(bam_path, seq_len, **kwargs)
