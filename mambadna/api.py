"""Python API for notebooks: ``mambadna.load(path).embed(...)``.

>>> import mambadna
>>> model = mambadna.load("runs/ecoli", device="auto")
>>> X = model.embed(["ACGT...", "GGCA..."], pool="mean")        # (2, d_model)
>>> H = model.embed("ACGT...", pool=None)                       # (L, d_model)
>>> g = mambadna.Genome("genome.fa")
>>> X, index = model.embed(g, intervals=[("chr1", 0, 1000, "-")], return_index=True)
>>> X = model.embed(bed="regions.bed", genome=g)
>>> X = model.embed(bam="reads.bam", region="chr1:1-5000")
>>> X = model.embed(vcf="calls.vcf.gz", genome=g, window=1024)   # rows: ref, alt, ref, alt ...

Sequences of any length are processed exactly in chunks (see
:mod:`mambadna.inference.engine`); results are numpy arrays.
"""
from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.components.checkpoint import load_model, read_config
from mambadna.model.config import ModelConfig
from mambadna.inference.engine import Embedder, Stream, stack_results
from mambadna.inference.pooling import normalize_pool
from mambadna.components.device import resolve_device
from mambadna.errors import InputError
from mambadna.model.encoder import MambaDNA
from mambadna.tokenizer import MASK, TokenizationError, encode

PathLike = Union[str, os.PathLike]
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
    try:
        return encode(seq, name=name)
    except TokenizationError as e:
        raise InputError(src, str(e)) from None


def _genome(genome) -> Any:
    from mambadna.io.fasta import Genome

    if genome is None:
        return None
    return genome if isinstance(genome, Genome) else Genome(genome)


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
    g = _genome(genome)
    for iv in intervals:
        contig, start, end, strand, name = _interval_parts(iv)
        strand = "+" if strand == "." else strand
        if end <= start:
            raise InputError(g.path, f"empty interval {contig}:{start}-{end}")
        ids = g.fetch_ids(contig, start, end, strand=strand)
        yield Record(ids, name or f"{contig}:{start}-{end}({strand})", g.resolve_contig(contig),
                     start, end, strand)


def fasta_records(path: PathLike) -> Iterator[Record]:
    """Records of a FASTA file (plain or gzip), streamed."""
    from mambadna.io.labeled import read_fasta_records

    for name, seq, _ in read_fasta_records(path):
        yield Record(_encode(seq, name, os.fspath(path)), name, "", 0, len(seq), "+")


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

    for w in iter_variant_windows(vcf, _genome(genome), window=window, skip_ref_mismatch=skip_ref_mismatch):
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
        elif hasattr(x, "ref_ids") and hasattr(x, "alt_ids"):
            yield from _variant_records(x)
        elif hasattr(x, "sequence") and hasattr(x, "name"):
            yield _read_record(x)
        elif hasattr(x, "contig") or isinstance(x, (tuple, list)):
            if genome is None:
                raise InputError(None, f"item {i}: intervals need a genome (genome=...)")
            g = g or _genome(genome)
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

        g = _genome(genome)
        return interval_records(g, read_bed(bed, g))
    if fasta is not None:
        return fasta_records(fasta)
    if bam is not None:
        return bam_records(bam, region=region, reference=genome if isinstance(genome, (str, os.PathLike)) else
                           (genome.path if genome is not None else None), min_mapq=min_mapq)
    return variant_records(vcf, genome, window=window, skip_ref_mismatch=skip_ref_mismatch)


def _is_single(inputs) -> bool:
    if isinstance(inputs, (str, bytes)):
        return True
    return isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 1


def index_frame(rows: Sequence[Tuple]):
    """Index rows -> pandas DataFrame with columns name, contig, start, end, strand, allele."""
    import pandas as pd

    df = pd.DataFrame(list(rows), columns=list(INDEX_COLUMNS))
    return df.astype({"start": "int64", "end": "int64"})


# --------------------------------------------------------------------------- model
class Model:
    """A loaded model ready for inference.

    Attributes: ``config`` (:class:`ModelConfig`), ``torch_model``
    (:class:`MambaDNA`, eval mode), ``device``, ``path``, ``checkpoint_config``
    (the whole config.json).
    """

    def __init__(self, torch_model: MambaDNA, device: torch.device, path: Optional[Path] = None,
                 checkpoint_config: Optional[Dict[str, Any]] = None):
        self.torch_model = torch_model.eval()
        self.device = device
        self.path = path
        self.checkpoint_config = checkpoint_config or {"model": torch_model.config.to_dict()}

    @property
    def config(self) -> ModelConfig:
        return self.torch_model.config

    @property
    def d_model(self) -> int:
        return self.config.d_model

    @property
    def is_causal(self) -> bool:
        return not self.config.bidirectional

    def __repr__(self) -> str:
        c = self.config
        kind = "causal" if self.is_causal else "bidirectional"
        return (f"mambadna.Model({str(self.path)!r}, {kind}, {c.n_layers} x {c.d_model}, "
                f"{self.torch_model.num_parameters():,} parameters, device={self.device})")

    def embedder(self, **kw) -> Embedder:
        """An :class:`~mambadna.inference.engine.Embedder` on this model (same keywords as :meth:`embed`)."""
        return Embedder(self.torch_model, device=self.device, **kw)

    def embed(self, inputs=None, pool: Optional[str] = "mean", layer: int = -1, rc_average: bool = False,
              batch_size: Optional[int] = None, chunk_size: Optional[int] = None,
              progress: Optional[bool] = None, *, center_width: int = 64,
              max_tokens: Optional[int] = None, precision: str = "fp32", return_index: bool = False,
              genome=None, intervals=None, bed=None, fasta=None, bam=None, region=None, vcf=None,
              window: int = 1024, min_mapq: int = 0):
        """Embed sequences; returns numpy float32.

        inputs: a string or 1-D token ids (-> one result without the batch
        axis), a list of strings / id arrays / intervals / reads / variant
        windows, a 2-D id array, or a Genome with ``intervals`` / ``bed``.
        Or a file source: ``fasta=``, ``bed=`` + ``genome=``, ``bam=`` (+
        ``region=`` "chr:start-end", ``min_mapq``), ``vcf=`` + ``genome=`` (+
        ``window``; two rows per ALT allele: ref window then alt window).

        pool: "mean", "center" (``center_width`` tokens around the middle),
        "first", "last", "max" -> (N, d_model); None/"none" -> per token,
        (N, L, d_model) when all lengths agree, else a list of (L_i, d_model).
        layer: block index (negative from the end; -1 = last block + final
        norm). rc_average: average with the reverse complement's output
        aligned to the forward strand. chunk_size: positions per device step
        for long sequences (result is exact either way). return_index: also
        return a pandas DataFrame (name, contig, start, end, strand, allele).
        """
        emb = self.embedder(pool=pool, layer=layer, rc_average=rc_average, batch_size=batch_size,
                            chunk_size=chunk_size, center_width=center_width, max_tokens=max_tokens,
                            precision=precision, progress=progress)
        recs = list(iter_records(inputs, genome=genome, intervals=intervals, bed=bed, fasta=fasta, bam=bam,
                                 region=region, vcf=vcf, window=window, min_mapq=min_mapq))
        if not recs:
            raise InputError(None, "nothing to embed (no sequences)")
        res = emb.embed([r.ids for r in recs])
        out = stack_results(res, pooled=emb.pool != "none")
        if _is_single(inputs) and len(recs) == 1:
            out = out[0]
        if return_index:
            return out, index_frame([r.row() for r in recs])
        return out

    def logits(self, inputs, batch_size: Optional[int] = None, chunk_size: Optional[int] = None,
               progress: Optional[bool] = None, genome=None):
        """LM logits per token: (N, L, vocab_size) (or (L, vocab) for one
        sequence; a list when lengths differ). Token ids may contain [MASK]=3
        (masked-LM scoring with a bidirectional model). Works for any length
        (chunked exactly like :meth:`embed`)."""
        emb = self.embedder(pool=None, head="logits", batch_size=batch_size, chunk_size=chunk_size,
                            progress=progress)
        recs = list(iter_records(inputs, genome=genome))
        out = stack_results(emb.embed([r.ids for r in recs]), pooled=False)
        return out[0] if _is_single(inputs) else out

    def masked_log_probs(self, inputs, positions: Sequence[int], batch_size: Optional[int] = None,
                         chunk_size: Optional[int] = None) -> np.ndarray:
        """Log-softmax over the vocabulary at ``positions[i]`` of sequence i
        with that position replaced by [MASK]: (N, vocab_size). Index with
        ``mambadna.tokenizer.A/C/G/T``."""
        recs = list(iter_records(inputs))
        if len(recs) != len(positions):
            raise InputError(None, f"{len(recs)} sequences but {len(positions)} positions")
        seqs = []
        for r, p in zip(recs, positions):
            ids = np.array(r.ids, dtype=np.int64)
            if not 0 <= int(p) < len(ids):
                raise InputError(None, f"{r.name}: position {p} outside the sequence (length {len(ids)})")
            ids[int(p)] = MASK
            seqs.append(ids)
        emb = self.embedder(pool=None, head="logits", batch_size=batch_size, chunk_size=chunk_size,
                            progress=False)
        out = np.stack([lg[int(p)] for lg, p in zip(emb.iter_embed(seqs), positions)]) if seqs else \
            np.zeros((0, self.config.vocab_size), np.float32)
        out = out - out.max(1, keepdims=True)
        return out - np.log(np.exp(out).sum(1, keepdims=True))

    def stream(self, batch_size: int = 1, layer: int = -1) -> Stream:
        """Recurrent token-by-token inference (causal models): returns a
        :class:`~mambadna.inference.engine.Stream` with ``step(token) -> (batch, d_model)``,
        ``feed(tokens) -> (batch, L, d_model)``, ``next_token_logits()``, ``reset()``."""
        return Stream(self.torch_model, batch_size=batch_size, layer=layer, device=self.device)


def load(path: PathLike, device: Union[str, torch.device, None] = "auto") -> Model:
    """Load a model directory (config.json + model.safetensors) for inference.

    device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    """
    dev = resolve_device(device)
    path = Path(path)
    cfg = read_config(path)
    model = load_model(path, dev)
    return Model(model, dev, path, cfg)


# --------------------------------------------------------------------------- files
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
    progress: Optional[bool] = True


class _NpzWriter:
    """Streams rows to a raw temporary file, then assembles an .npz:
    ``embeddings`` (N, D) pooled or (total_tokens, D) per token with
    ``offsets`` (N + 1,) int64 (sequence i = embeddings[offsets[i]:offsets[i+1]]),
    and index columns as plain numpy arrays (no pickle)."""

    def __init__(self, tmp_path: Path, dim: int, per_token: bool, meta: Dict[str, Any]):
        import tempfile

        self.path, self.dim, self.per_token, self.meta = tmp_path, dim, per_token, meta
        fd, raw = tempfile.mkstemp(prefix=".embed-rows.", suffix=".tmp", dir=tmp_path.parent)
        self.raw_path = Path(raw)
        self.raw = os.fdopen(fd, "wb")
        self.rows = 0
        self.offsets = [0]
        self.index: List[Tuple] = []

    def add(self, arr: np.ndarray, row: Tuple) -> None:
        a = np.ascontiguousarray(arr, dtype="<f4")
        self.raw.write(a.tobytes())
        n = a.shape[0] if self.per_token else 1
        self.rows += n
        self.offsets.append(self.rows)
        self.index.append(row)

    def close(self) -> None:
        import zipfile

        self.raw.close()
        try:
            with zipfile.ZipFile(self.path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                with zf.open("embeddings.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array_header_1_0(
                        f, {"descr": "<f4", "fortran_order": False, "shape": (self.rows, self.dim)})
                    with open(self.raw_path, "rb") as src:
                        while True:
                            buf = src.read(1 << 24)
                            if not buf:
                                break
                            f.write(buf)
                cols = list(zip(*self.index)) if self.index else [()] * len(INDEX_COLUMNS)
                arrays: Dict[str, np.ndarray] = {}
                for name, col in zip(INDEX_COLUMNS, cols):
                    if name in ("start", "end"):
                        arrays[name] = np.asarray(col, dtype=np.int64)
                    else:
                        arrays[name] = np.asarray([str(c) for c in col], dtype=np.str_)
                if self.per_token:
                    arrays["offsets"] = np.asarray(self.offsets, dtype=np.int64)
                for k, v in self.meta.items():
                    arrays[k] = np.asarray(v)
                for name, arr in arrays.items():
                    with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                        np.lib.format.write_array(f, arr, allow_pickle=False)
        finally:
            self.discard()

    def discard(self) -> None:
        if not self.raw.closed:
            self.raw.close()
        try:
            self.raw_path.unlink()
        except FileNotFoundError:
            pass


class _ParquetWriter:
    """Row-group streaming writer: index columns + ``embedding``
    (fixed_size_list<float32, D> pooled; list<fixed_size_list<float32, D>> per token)."""

    def __init__(self, tmp_path: Path, dim: int, per_token: bool, meta: Dict[str, Any],
                 group_bytes: int = 64 << 20):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise InputError(tmp_path, "writing .parquet needs pyarrow (pip install pyarrow), "
                                       "or write .npz instead") from None
        self.pa, self.pq = pa, pq
        self.dim, self.per_token = dim, per_token
        emb_t = pa.list_(pa.float32(), dim)
        if per_token:
            emb_t = pa.list_(emb_t)
        fields = [pa.field(n, pa.int64() if n in ("start", "end") else pa.string()) for n in INDEX_COLUMNS]
        self.schema = pa.schema(fields + [pa.field("embedding", emb_t)],
                                metadata={k.encode(): str(v).encode() for k, v in meta.items()})
        self.writer = pq.ParquetWriter(str(tmp_path), self.schema)
        self.group_bytes = group_bytes
        self._rows: List[Tuple] = []
        self._arrs: List[np.ndarray] = []
        self._bytes = 0

    def add(self, arr: np.ndarray, row: Tuple) -> None:
        self._rows.append(row)
        self._arrs.append(np.ascontiguousarray(arr, dtype=np.float32))
        self._bytes += arr.nbytes
        if self._bytes >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        pa = self.pa
        cols = list(zip(*self._rows))
        arrays = [pa.array(list(c), type=self.schema.field(n).type) for n, c in zip(INDEX_COLUMNS, cols)]
        flat = pa.array(np.concatenate([a.reshape(-1) for a in self._arrs]), type=pa.float32())
        emb = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        if self.per_token:
            offs = np.zeros(len(self._arrs) + 1, dtype=np.int32)
            np.cumsum([a.shape[0] for a in self._arrs], out=offs[1:])
            emb = pa.ListArray.from_arrays(pa.array(offs), emb)
        self.writer.write_table(pa.Table.from_arrays(arrays + [emb], schema=self.schema))
        self._rows, self._arrs, self._bytes = [], [], 0

    def close(self) -> None:
        self._flush()
        self.writer.close()

    def discard(self) -> None:
        try:
            self.writer.close()
        except Exception:
            pass


def embed_file(cfg: EmbedFileConfig) -> Dict[str, Any]:
    """Embed one source into ``cfg.out`` (.npz or .parquet), atomically,
    streaming in blocks (memory bounded by a block, not by the input).

    Returns a summary: rows, tokens, dim, out, format.
    """
    from mambadna.io.files import atomic_path

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
        genome = _genome(cfg.reference)
    model = load(cfg.model, cfg.device)
    emb = model.embedder(pool=pool, layer=cfg.layer, rc_average=cfg.rc_average, batch_size=cfg.batch_size,
                         chunk_size=cfg.chunk_size, center_width=cfg.center_width, progress=cfg.progress)
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
        Writer = _NpzWriter if suffix == ".npz" else _ParquetWriter
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
