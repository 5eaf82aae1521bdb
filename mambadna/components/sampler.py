"""Pretraining data: fixed-length genome windows and BAM reads as map-style datasets.

Every item is a deterministic function of ``(seed, split, index)``, so
resuming is "start at sample index k" (e.g. ``DataLoader(ds, sampler=range(k, n))``),
DDP ranks take different indices, and DataLoader workers need no coordination.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.io.fasta import Genome
from mambadna.io.bed import Spans, intersect_spans, merge_spans, read_bed, spans_from_intervals, subtract_spans
from mambadna.tokenizer import N as N_ID
from mambadna.tokenizer import PAD, encode, reverse_complement

PathLike = Union[str, os.PathLike]

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
