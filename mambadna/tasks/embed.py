"""`mambadna embed`: one input source to an .npz / .parquet of embeddings + index."""
from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mambadna.api import load
from mambadna.errors import InputError
from mambadna.inference.pooling import normalize_pool
from mambadna.io.files import atomic_path
from mambadna.io.records import as_genome, iter_records
from mambadna.io.writers import NpzWriter, ParquetWriter


@dataclass
class EmbedFileConfig:
    """Options of ``mambadna embed`` (one source of fasta / bed / bam / vcf)."""

    model: str
    out: str
    fasta: Optional[str] = None
    bed: Optional[str] = None
    bam: Optional[str] = None
    vcf: Optional[str] = None
    reference: Optional[str] = None
    region: Optional[str] = None
    window: int = 1024
    min_mapq: int = 0
    pool: str = "mean"
    layer: int = -1
    rc_average: bool = False
    chunk_size: Optional[int] = None
    batch_size: Optional[int] = None
    center_width: int = 64
    device: str = "auto"
    precision: str = "fp32"
    progress: Optional[bool] = True


def embed_file(cfg: EmbedFileConfig) -> Dict[str, Any]:
    """Embed one source into ``cfg.out`` (.npz or .parquet), atomically,
    streaming in blocks (memory bounded by a block, not by the input).

    Returns a summary: rows, tokens, dim, out, format.
    """
    out = Path(cfg.out)
    suffix = out.suffix.lower()
    if suffix not in (".npz", ".parquet"):
        raise InputError(out, "output must end in .npz or .parquet")
    pool = normalize_pool(cfg.pool)
    sources = [n for n in ("fasta", "bed", "bam", "vcf") if getattr(cfg, n)]
    if len(sources) != 1:
        raise InputError(None, "give exactly one of --fasta, --bed, --bam, --vcf"
                               + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
    src = sources[0]
    path = getattr(cfg, src)
    if not Path(path).exists():
        raise InputError(path, "no such file")
    if src in ("bed", "vcf") and not cfg.reference:
        raise InputError(path, f"--{src} needs --reference FASTA")
    if cfg.region and src != "bam":
        raise InputError(None, "--region applies to --bam only")
    genome = None
    if cfg.reference and src != "bam":
        genome = as_genome(cfg.reference)
    model = load(cfg.model, cfg.device)
    emb = model.embedder(pool=pool, layer=cfg.layer, rc_average=cfg.rc_average, batch_size=cfg.batch_size,
                         chunk_size=cfg.chunk_size, center_width=cfg.center_width, precision=cfg.precision,
                         progress=cfg.progress)
    kw: Dict[str, Any] = {src: path}
    if src == "bam":
        kw.update(region=cfg.region, min_mapq=cfg.min_mapq, genome=cfg.reference)
    elif genome is not None:
        kw["genome"] = genome
    if src == "vcf":
        kw["window"] = cfg.window
    records = iter_records(**kw)
    meta = {"pool": pool, "layer": int(cfg.layer), "rc_average": bool(cfg.rc_average),
            "model": str(cfg.model), "d_model": model.d_model}
    per_token = pool == "none"
    pending: "collections.deque[Tuple]" = collections.deque()
    n_rows = 0

    def ids_stream():
        for r in records:
            pending.append(r.row())
            yield r.ids

    with atomic_path(out, suffix=suffix) as tmp:
        Writer = NpzWriter if suffix == ".npz" else ParquetWriter
        writer = Writer(tmp, model.d_model, per_token, meta)
        try:
            for arr in emb.iter_embed(ids_stream()):
                row = pending.popleft()
                writer.add(arr, row)
                n_rows += 1
            if n_rows == 0:
                raise InputError(path, "nothing to embed (no sequences)")
            writer.close()
        except BaseException:
            writer.discard()
            raise
    return {"rows": n_rows, "dim": model.d_model, "out": str(out), "format": suffix[1:], "pool": pool}
