"""Byte-level, single-nucleotide tokenizer.

Token ids match the character tokenizers of Caduceus and HyenaDNA so their
embeddings line up: [CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5
[UNK]=6 A=7 C=8 G=9 T=10 N=11.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

CLS, SEP, BOS, MASK, PAD, RESERVED, UNK = 0, 1, 2, 3, 4, 5, 6
A, C, G, T, N = 7, 8, 9, 10, 11
VOCAB_SIZE = 12
SPECIAL_TOKENS = {"[CLS]": CLS, "[SEP]": SEP, "[BOS]": BOS, "[MASK]": MASK, "[PAD]": PAD,
                  "[RESERVED]": RESERVED, "[UNK]": UNK}
ID_TO_TOKEN = {v: k for k, v in SPECIAL_TOKENS.items()} | {A: "A", C: "C", G: "G", T: "T", N: "N"}
NUCLEOTIDE_IDS = (A, C, G, T)

_INVALID = 255
_LUT = np.full(256, _INVALID, dtype=np.uint8)
for _ch, _id in {"A": A, "C": C, "G": G, "T": T, "U": T, "N": N}.items():
    _LUT[ord(_ch)] = _id
    _LUT[ord(_ch.lower())] = _id
for _ch in "RYKMSWBDHV":
    _LUT[ord(_ch)] = N
    _LUT[ord(_ch.lower())] = N
_LOWER = np.zeros(256, dtype=bool)
_LOWER[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = True

# the same tables as bytes.translate tables (a C loop over bytes, ~1 GB/s)
_LUT_BYTES = _LUT.tobytes()
_LOWER_BYTES = _LOWER.astype(np.uint8).tobytes()

# ids -> ASCII byte for decoding (special tokens decode to '?' inside sequences)
_DECODE = np.full(VOCAB_SIZE, ord("?"), dtype=np.uint8)
for _id, _ch in {A: "A", C: "C", G: "G", T: "T", N: "N"}.items():
    _DECODE[_id] = ord(_ch)

# complement on ids: A<->T, C<->G, N and specials unchanged
_COMPLEMENT = np.arange(VOCAB_SIZE, dtype=np.uint8)
_COMPLEMENT[A], _COMPLEMENT[T], _COMPLEMENT[C], _COMPLEMENT[G] = T, A, G, C


class TokenizationError(ValueError):
    """A byte outside the nucleotide alphabet; message names the sequence and offset."""


def _as_bytes(seq: Union[str, bytes, bytearray, memoryview, np.ndarray]) -> bytes:
    if isinstance(seq, str):
        return seq.encode("latin-1", errors="replace")
    if isinstance(seq, np.ndarray):
        return seq.view(np.uint8).ravel().tobytes()
    return bytes(seq) if not isinstance(seq, bytes) else seq


def encode(
    seq: Union[str, bytes, bytearray, memoryview, np.ndarray],
    *,
    name: str = "<sequence>",
    lenient: bool = False,
    return_softmask: bool = False,
) -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Encode nucleotides to token ids.

    seq: str or bytes of length L. Returns ids (L,) uint8; with
    ``return_softmask`` also a boolean (L,) array, True for lower-case bases.
    Lower case maps like upper case; IUPAC ambiguity codes map to N; U to T.
    Any other byte raises :class:`TokenizationError` naming ``name`` and the
    offset, or becomes [UNK] with ``lenient=True``.
    """
    raw = _as_bytes(seq)
    ids = np.frombuffer(raw.translate(_LUT_BYTES), dtype=np.uint8)
    if len(ids) and ids.max() == _INVALID:
        bad = ids == _INVALID
        if not lenient:
            off = int(np.flatnonzero(bad)[0])
            raise TokenizationError(
                f"{name}: invalid character {chr(raw[off])!r} (byte {raw[off]}) at offset {off}")
        ids = ids.copy()
        ids[bad] = UNK
    if return_softmask:
        return ids, np.frombuffer(raw.translate(_LOWER_BYTES), dtype=np.bool_)
    return ids


def encode_input(seq, src, name: str = "sequence", **kw) -> np.ndarray:
    """:func:`encode`, with a byte outside the alphabet reported as an
    ``InputError`` naming ``src`` (the file the sequence came from)."""
    from mambadna.errors import InputError

    try:
        return encode(seq, name=name, **kw)
    except TokenizationError as e:
        raise InputError(src, str(e)) from None


def decode(ids: np.ndarray, *, keep_special: bool = False) -> str:
    """Token ids (L,) -> nucleotide string; special tokens become '?' unless
    ``keep_special`` renders them as their names."""
    ids = np.asarray(ids)
    if keep_special:
        return "".join(ID_TO_TOKEN.get(int(i), "[UNK]") for i in ids)
    return _DECODE[ids.astype(np.intp)].tobytes().decode("ascii")


_COMPLEMENT_T = []  # the complement table as a torch tensor (made at first use: torch is imported lazily)


def reverse_complement(ids):
    """Reverse complement on token ids, vectorised, over the last axis.

    ids: (..., L) numpy array or torch tensor. N and special tokens keep their id.
    """
    try:
        import torch

        if isinstance(ids, torch.Tensor):
            from mambadna.components.device import constant_on

            if not _COMPLEMENT_T:
                _COMPLEMENT_T.append(torch.as_tensor(_COMPLEMENT.astype(np.int64)))
            return constant_on(_COMPLEMENT_T[0], ids.device)[ids.long()].to(ids.dtype).flip(-1)
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(ids)
    return _COMPLEMENT[arr.astype(np.intp)].astype(arr.dtype)[..., ::-1]


def reverse_complement_str(seq: str) -> str:
    """Reverse complement of a nucleotide string (IUPAC codes become N, case folded)."""
    return decode(reverse_complement(encode(seq, lenient=True)))
