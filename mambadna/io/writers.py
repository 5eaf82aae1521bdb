"""Streaming writers of embeddings: .npz (raw rows assembled at close) and .parquet (row groups)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from mambadna.errors import InputError
from mambadna.io.records import INDEX_COLUMNS


class NpzWriter:
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


class ParquetWriter:
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
