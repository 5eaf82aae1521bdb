"""`mambadna embed`: one input source to an .npz / .parquet of embeddings + index."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from mambadna.api import load
from mambadna.errors import InputError
from mambadna.inference.pooling import normalize_pool
from mambadna.io.files import atomic_path, check_finite, prepare_output, publish_mode
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
    overwrite: bool = False  # replace an existing --out that is not an earlier embed output
    shard_size: Optional[int] = None  # records per shard (the unit split across torchrun ranks and resumed)


def embed_file(cfg: EmbedFileConfig) -> Dict[str, Any]:
    """Embed one source into ``cfg.out`` (.npz or .parquet), atomically,
    streaming (memory bounded by a shard, not by the input).

    Under ``torchrun`` the records are split across the processes and rank 0
    merges them into the same bytes as a one-process run; an interrupted run
    resumes from its finished shards (:mod:`mambadna.components.shards`).

    Returns a summary: rows, dim, out, format, pool.
    """
    from mambadna.components.shards import run

    return run(_EmbedJob(cfg), cfg.device)


SHARD_RECORDS = 4096  # records per shard unless --shard-size; a shard also closes at the engine's block of tokens


class _EmbedJob:
    """:class:`mambadna.components.shards.ShardJob` of ``mambadna embed``."""

    command = "embed"

    def __init__(self, cfg: EmbedFileConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.outputs = [self.out]
        self.n_shards = 0
        self.bar = None

    def check(self) -> None:
        cfg, out = self.cfg, self.out
        self.suffix = out.suffix.lower()
        if self.suffix not in (".npz", ".parquet"):
            raise InputError(out, "output must end in .npz or .parquet")
        self.pool = normalize_pool(cfg.pool)
        sources = [n for n in ("fasta", "bed", "bam", "vcf") if getattr(cfg, n)]
        if len(sources) != 1:
            raise InputError(None, "give exactly one of --fasta, --bed, --bam, --vcf"
                                   + (f" (got {', '.join('--' + s for s in sources)})" if sources else ""))
        self.src = sources[0]
        self.path = getattr(cfg, self.src)
        if not Path(self.path).exists():
            raise InputError(self.path, "no such file")
        if self.src in ("bed", "vcf") and not cfg.reference:
            raise InputError(self.path, f"--{self.src} needs --reference FASTA")
        if cfg.region and self.src != "bam":
            raise InputError(None, "--region applies to --bam only")
        if cfg.shard_size is not None and cfg.shard_size < 1:
            raise InputError(None, f"--shard-size must be >= 1, got {cfg.shard_size}")

    def prepare_outputs(self) -> None:
        """Rank 0: refuse outputs that would destroy an input or a foreign file; lock them."""
        cfg = self.cfg
        prepare_output(self.out, "file", overwrite=cfg.overwrite, command="embed",
                       inputs=[cfg.model, cfg.fasta, cfg.bed, cfg.bam, cfg.vcf, cfg.reference])

    def _cut(self, device):
        from mambadna.components.shards import Cut
        from mambadna.inference.engine import default_max_tokens

        # a shard is at most one of the engine's blocks of tokens (what it sorts into batches)
        block = (2 if self.pool == "none" else 8) * default_max_tokens(device)
        return Cut(self.cfg.shard_size or SHARD_RECORDS, max_tokens=block, length=lambda r: len(r.ids))

    def key(self, device) -> Dict[str, Any]:
        import dataclasses

        from mambadna import __version__
        from mambadna.components.shards import file_identity, model_identity

        skip = {"out", "progress", "device", "model", "fasta", "bed", "bam", "vcf", "reference", "overwrite"}
        cut = self._cut(device)
        return {"command": "embed", "version": __version__, "device": device.type, "source": self.src,
                "input": file_identity(self.path), "reference": file_identity(self.cfg.reference),
                "model": model_identity(self.cfg.model), "shard": [cut.size, cut.max_tokens], "format": self.suffix,
                "options": {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in skip}}

    def setup(self, device) -> None:
        from mambadna.components.distributed import is_main_process

        cfg = self.cfg
        self.genome = as_genome(cfg.reference) if cfg.reference and self.src != "bam" else None
        model = load(cfg.model, device)
        self.dim = model.d_model
        self.emb = model.embedder(pool=self.pool, layer=cfg.layer, rc_average=cfg.rc_average,
                                  batch_size=cfg.batch_size, chunk_size=cfg.chunk_size,
                                  center_width=cfg.center_width, precision=cfg.precision, progress=False)
        self.meta = {"pool": self.pool, "layer": int(cfg.layer), "rc_average": bool(cfg.rc_average),
                     "model": str(cfg.model), "d_model": model.d_model}
        self.cut = self._cut(device)
        if cfg.progress and is_main_process():
            from tqdm.auto import tqdm

            self.bar = tqdm(desc="embed", unit="seq", dynamic_ncols=True, leave=False)

    def shards(self, own):
        cfg = self.cfg
        kw: Dict[str, Any] = {self.src: self.path}
        if self.src == "bam":
            kw.update(region=cfg.region, min_mapq=cfg.min_mapq, genome=cfg.reference)
        elif self.genome is not None:
            kw["genome"] = self.genome
        if self.src == "vcf":
            kw["window"] = cfg.window
        yield from self.cut.owned(iter_records(**kw), own)
        self.n_shards = self.cut.count

    def write(self, k: int, records, sd, check) -> Tuple[list, Dict[str, Any]]:
        """Shard k: raw little-endian float32 rows (.f32) and its index rows."""
        per_token = self.pool == "none"
        raw = sd.path(k, ".f32")
        lengths = []
        with atomic_path(raw) as tmp, open(tmp, "wb") as fh:
            for r, arr in zip(records, self.emb.iter_embed([r.ids for r in records])):
                a = np.ascontiguousarray(arr, dtype="<f4")
                # NaN/inf (diverged weights, overflow) is an error before any byte of it is written
                check_finite(a, self.out, f"embedding of {self.src} record {r.name!r}")
                fh.write(a.tobytes())
                lengths.append(int(a.shape[0]) if per_token else 1)
                if self.bar is not None:
                    self.bar.update(1)
                check()
        rows = [[r.name, r.contig, int(r.start), int(r.end), r.strand, r.allele] for r in records]
        return [raw], {"rows": rows, "lengths": lengths}

    def merge(self, metas, sd) -> Dict[str, Any]:
        """Rank 0: the shards' rows, in input order, through the one writer."""
        per_token = self.pool == "none"
        n_rows = sum(len(m["rows"]) for m in metas)
        if n_rows == 0:
            raise InputError(self.path, "nothing to embed (no sequences)")
        with atomic_path(self.out, suffix=self.suffix) as tmp:
            Writer = NpzWriter if self.suffix == ".npz" else ParquetWriter
            writer = Writer(tmp, self.dim, per_token, self.meta)
            try:
                for k, m in enumerate(metas):
                    arr = np.fromfile(sd.path(k, ".f32"), dtype="<f4").reshape(-1, self.dim)
                    off = 0
                    for row, n in zip(m["rows"], m["lengths"]):
                        writer.add(arr[off:off + n] if per_token else arr[off], tuple(row))
                        off += n
                writer.close()
            except BaseException:
                writer.discard()
                raise
            publish_mode(tmp)
        return {"rows": n_rows, "dim": self.dim, "out": str(self.out), "format": self.suffix[1:], "pool": self.pool}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
