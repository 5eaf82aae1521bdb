"""``mambadna attribute``: attributions of a fine-tuned head, ``attribute_file(cfg)``.

Sequences from a FASTA, or BED intervals of a reference (strand '-' read as
the reverse complement), attributed with :mod:`mambadna.inference.attribution`
(``ig``, ``saliency`` or ``ixg`` over the one-hot input). The .npz holds
(no pickle; ``np.load(path)``):

* ``attributions`` (N, Lmax, 4) float32 over A, C, G, T, zero past each length;
* ``onehot`` (N, Lmax, 4) uint8 of the sequences (N bases: all zero);
* ``lengths`` (N,), ``name``, ``contig``, ``start``, ``end``, ``strand`` (N,);
* ``output`` (N,) f(x) (the target's logit or probability) and
  ``baseline_output`` (N,) f(baseline) (ig; NaN otherwise), so that
  ``attributions.sum((1, 2)) ≈ output - baseline_output`` for ig;
* scalars ``method``, ``target``, ``output_kind``, ``baseline``, ``n_steps``.

``logo``: PNG of the first (up to 4) sequences' attributions. All outputs are
atomic; every input check runs before any gradient.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass


import numpy as np

from mambadna.errors import InputError
from mambadna.inference.attribution import (
    BASELINES,
    METHODS,
    NUC,
    OUTPUTS,
    Attributor,
    iter_attributions,
)
from mambadna.inference.logos import LOGO_MAX_BP, attribution_figure, save_png
from mambadna.io.files import (
    atomic_path,
    prepare_output,
    publish_mode,
    release_output_locks,
)

log = logging.getLogger("mambadna")


@dataclass
class AttributeConfig:
    """Everything ``mambadna attribute`` needs. model: a fine-tuned model
    directory; fasta, or bed + reference: the sequences; out: .npz; logo:
    optional PNG; method: ig | saliency | ixg; n_steps, baseline: integrated
    gradients; target, output, rc_average: see
    :class:`~mambadna.inference.attribution.Attributor`; batch_size:
    sequences per batch; max_records: stop after N sequences."""

    model: str
    out: str
    fasta: Optional[str] = None
    bed: Optional[str] = None
    reference: Optional[str] = None
    logo: Optional[str] = None
    method: str = "ig"
    n_steps: int = 50
    baseline: str = "uniform"
    target: Optional[str] = None
    output: str = "logit"
    rc_average: Optional[bool] = None
    batch_size: Optional[int] = None
    max_records: Optional[int] = None
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if bool(self.fasta) == bool(self.bed):
            raise InputError(None, "give exactly one input: --fasta, or --bed with --reference")
        if self.bed and not self.reference:
            raise InputError(self.bed, "needs --reference (the genome FASTA)")
        for name, allowed in (("method", METHODS), ("baseline", BASELINES), ("output", OUTPUTS)):
            v = str(getattr(self, name)).strip().lower()
            if v not in allowed:
                raise InputError(None, f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
            setattr(self, name, v)
        if self.n_steps < 1:
            raise InputError(None, f"--n-steps must be >= 1, got {self.n_steps}")
        for name in ("batch_size", "max_records"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise InputError(None, f"--{name.replace('_', '-')} must be >= 1, got {v}")
        if self.logo and str(self.logo) == str(self.out):
            raise InputError(None, "--out and --logo must be different files")


def _read(cfg: AttributeConfig):
    """(index rows (name, contig, start, end, strand), token id arrays), through the one input adapter."""
    import itertools

    from mambadna.io.records import iter_records

    if cfg.fasta:
        recs, src = iter_records(fasta=cfg.fasta), cfg.fasta
    else:
        recs, src = iter_records(bed=cfg.bed, genome=cfg.reference), cfg.bed
    recs = list(itertools.islice(recs, cfg.max_records))
    if not recs:
        raise InputError(src, "no sequences to attribute")
    for r in recs:
        if len(r.ids) == 0:
            raise InputError(src, f"sequence {r.name!r} is empty")
    rows = [(r.name, r.contig or ".", r.start, r.end, r.strand) for r in recs]
    return rows, [r.ids.astype(np.int64) for r in recs], src


def attribute_file(cfg: AttributeConfig) -> Dict[str, Any]:
    """Attribute every sequence and write ``cfg.out`` (+ ``cfg.logo``); see the
    module doc. Returns a summary (rows, max_length, method, target, seconds)."""
    from tqdm.auto import tqdm

    from mambadna.components.device import resolve_device
    from mambadna.model.heads import has_head, load_classifier

    outs = [p for p in (cfg.out, cfg.logo) if p]
    try:
        for p in outs:
            prepare_output(p, "file", overwrite=True, inputs=[cfg.model, cfg.fasta, cfg.bed, cfg.reference],
                           command="attribute", what="--out" if p == cfg.out else "--logo")
        if not has_head(cfg.model):
            raise InputError(cfg.model, "attributions need a fine-tuned model with a head (this one has none; "
                                        "`mambadna ism --scores llr` scores bases zero-shot)")
        device = resolve_device(cfg.device)
        clf = load_classifier(cfg.model, device)
        try:
            attr = Attributor(clf, target=cfg.target, output=cfg.output, rc_average=cfg.rc_average, device=device)
        except InputError as e:
            raise InputError(cfg.model, e.problem) from None
        rows, seqs, _ = _read(cfg)
        if cfg.logo and len(seqs[0]) > LOGO_MAX_BP:
            raise InputError(cfg.logo, f"the logo draws the first sequences; {rows[0][0]!r} has "
                                       f"{len(seqs[0]):,} bases, at most {LOGO_MAX_BP:,} are readable (drop --logo)")
        N, Lmax = len(seqs), max(len(s) for s in seqs)
        att = np.zeros((N, Lmax, 4), np.float32)
        fx = np.zeros(N, np.float64)
        f0 = np.zeros(N, np.float64)
        t0 = time.time()
        bar = tqdm(total=N, disable=not cfg.progress, desc=f"attribute ({cfg.method})", unit="seq",
                   dynamic_ncols=True, leave=False)
        try:
            for i, a, y, y0 in iter_attributions(attr, seqs, cfg.method, cfg.n_steps, cfg.baseline,
                                                 cfg.batch_size, bar):
                att[i, : len(a)] = a
                fx[i], f0[i] = y, y0
        finally:
            bar.close()
        dt = time.time() - t0
        onehot = np.zeros((N, Lmax, 4), np.uint8)
        for i, s in enumerate(seqs):
            for j, tok in enumerate(NUC):
                onehot[i, : len(s), j] = s == tok
        cols = list(zip(*rows))
        arrays = dict(attributions=att, onehot=onehot, lengths=np.asarray([len(s) for s in seqs], np.int64),
                      name=np.asarray(cols[0], dtype=np.str_), contig=np.asarray(cols[1], dtype=np.str_),
                      start=np.asarray(cols[2], np.int64), end=np.asarray(cols[3], np.int64),
                      strand=np.asarray(cols[4], dtype=np.str_), output=fx, baseline_output=f0,
                      method=np.asarray(cfg.method), target=np.asarray(attr.target),
                      output_kind=np.asarray(cfg.output), baseline=np.asarray(cfg.baseline),
                      n_steps=np.asarray(cfg.n_steps))
        with atomic_path(cfg.out, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            publish_mode(tmp)
            if cfg.logo:  # inside: a failed logo leaves no .npz either
                k = min(N, 4)
                fig = attribution_figure([att[i, : len(seqs[i])] for i in range(k)], [r[0] for r in rows[:k]],
                                         method=cfg.method, onehots=[onehot[i, : len(seqs[i])] for i in range(k)])
                save_png(fig, cfg.logo)
        log.info("attribute: %d sequences (%s, target %s) in %.1f s", N, cfg.method, attr.target, dt)
        return {"rows": N, "max_length": Lmax, "method": cfg.method, "target": attr.target, "seconds": dt}
    finally:
        for p in outs:
            release_output_locks(p)
