"""BGZF (blocked gzip, as bgzip/htslib write it) from bytes, deterministically.

Pieces compressed separately concatenate into one valid BGZF file (a header
piece, record pieces in any number, then :data:`EOF`), which is how sharded
runs merge annotated VCFs without recompressing them: the same bytes in, in
the same pieces, give the same file whatever process compressed them.
"""
from __future__ import annotations

import struct
import zlib

BLOCK = 0xFF00  # uncompressed bytes per block (htslib's BGZF_BLOCK_SIZE): compressed always fits 64 KiB
EOF = bytes.fromhex("1f8b08040000000000ff0600424302001b0003000000000000000000")


def _block(data: bytes, level: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    body = c.compress(data) + c.flush()
    size = 18 + len(body) + 8
    head = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H2sHH", 6, b"BC", 2, size - 1)
    return head + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data))


def compress(data: bytes, level: int = 6) -> bytes:
    """``data`` as complete BGZF blocks (no EOF marker); empty data -> b""."""
    return b"".join(_block(data[i:i + BLOCK], level) for i in range(0, len(data), BLOCK))


class Writer:
    """Streams bytes to ``fh`` as BGZF blocks; the blocks are those of
    :func:`compress` on everything written, however the writes were split.
    ``close()`` writes the last (partial) block, not the EOF marker."""

    def __init__(self, fh, level: int = 6):
        self.fh, self.level = fh, level
        self.buf = bytearray()

    def write(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) >= BLOCK:
            n = len(self.buf) - len(self.buf) % BLOCK
            self.fh.write(compress(bytes(self.buf[:n]), self.level))
            del self.buf[:n]

    def close(self) -> None:
        if self.buf:
            self.fh.write(compress(bytes(self.buf), self.level))
            self.buf.clear()
