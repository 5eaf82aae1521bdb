"""Random access to a reference FASTA (plain, bgzip or plain gzip) through pysam's faidx.

``Genome`` opens the file lazily in each process, so it can be pickled into
torch DataLoader workers. A missing ``.fai`` is built next to the FASTA when
that folder is writable, else in the cache folder (``$MAMBADNA_CACHE`` or
``~/.cache/mambadna``). A plain-gzip FASTA (as NCBI ships genomes; faidx
cannot seek in it) is decompressed once into the cache.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import logging
import os
import shutil
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np

from mambadna.errors import InputError
from mambadna.io.files import atomic_path, check_input_file, publish_mode, quiet_htslib
from mambadna.tokenizer import encode_input, reverse_complement_str
from mambadna.io.files import PathLike

log = logging.getLogger("mambadna")


_GZIP_MAGIC = b"\x1f\x8b"
_MITO = ("chrM", "MT", "M", "chrMT", "mt", "mito", "MtDNA")


# --------------------------------------------------------------------------- helpers
def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$MAMBADNA_CACHE``, else ``~/.cache/mambadna``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MAMBADNA_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "mambadna"


def _cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return h


def compression_of(path: PathLike) -> str:
    """Return ``"bgzf"``, ``"gzip"`` or ``"none"`` from the first bytes of ``path``.

    BGZF is gzip with the FEXTRA flag and a ``BC`` extra subfield (SAM spec 4.1).
    """
    with open(path, "rb") as fh:
        head = fh.read(18)
    if not head.startswith(_GZIP_MAGIC):
        return "none"
    if len(head) >= 16 and head[3] & 4 and head[12:14] == b"BC":
        return "bgzf"
    return "gzip"


def open_text(path: PathLike):
    """Open a plain, gzip or bgzip text file for reading (``latin-1`` text mode)."""
    if compression_of(path) == "none":
        return open(path, "rt", encoding="latin-1", newline=None)
    return gzip.open(path, "rt", encoding="latin-1", newline=None)


def _dir_writable(d: Path) -> bool:
    """True when ``d`` may be written. Besides os.access (always True for
    root), require a write bit in the mode, so that a folder made read-only
    on purpose (shared data) is left alone even by root."""
    try:
        mode = d.stat().st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(d, os.W_OK | os.X_OK)


def match_contig(name: str, names: Iterable[str]) -> Optional[str]:
    """Match ``name`` against ``names`` exactly, then with/without a ``chr``
    prefix, then among mitochondrial aliases (chrM/MT/M). Returns the matching
    name from ``names`` or None."""
    names = list(names)
    pool = set(names)
    if name in pool:
        return name
    cands: List[str] = []
    if name.startswith("chr"):
        cands.append(name[3:])
    else:
        cands.append("chr" + name)
    if name in _MITO:
        cands.extend(_MITO)
    for c in cands:
        if c in pool:
            return c
    # case-insensitive last resort for the chr prefix (e.g. "Chr1")
    low = {n.lower(): n for n in names}
    for c in [name] + cands:
        if c.lower() in low:
            return low[c.lower()]
    return None


def _diagnose_fasta(path: Path, opener=None) -> str:
    """Find why faidx refused a FASTA: the first structural problem, as text."""
    opener = opener or open_text
    width = None  # (line bytes) for the current record
    short_seen_at = None
    name = None
    try:
        with opener(path) as fh:
            for lineno, line in enumerate(fh, 1):
                line = line.rstrip("\r\n")
                if line.startswith(">"):
                    name = line[1:].split()[0] if line[1:].split() else ""
                    if not name:
                        return f"line {lineno}: header without a name"
                    width = None
                    short_seen_at = None
                    continue
                if not line:
                    continue
                if name is None:
                    return f"line {lineno}: sequence before the first '>' header"
                if short_seen_at is not None:
                    return (f"record {name!r}, line {short_seen_at}: line shorter than the others "
                            f"in the middle of the sequence (inconsistent line lengths)")
                if width is None:
                    width = len(line)
                elif len(line) > width:
                    return (f"record {name!r}, line {lineno}: line longer than the first "
                            f"sequence line ({len(line)} > {width}; inconsistent line lengths)")
                elif len(line) < width:
                    short_seen_at = lineno
    except (OSError, EOFError, zlib.error) as e:
        return f"cannot read: {e}"
    return "faidx could not index it (duplicate names or blank lines inside a record?)"


# --------------------------------------------------------------------------- up-front validation
# Bytes a sequence line may hold: what the tokenizer encodes (ACGTUN and the
# IUPAC codes RYKMSWBDHV, either case) plus line ends and blanks (which faidx
# skips). Anything else ('@', '#', '-', '*', digits, ...) would stop training
# at the first window that samples it, so it is an error before any work.
_SEQ_BYTES = b"ACGTUNRYKMSWBDHVacgtunrykmswbdhv"
_SKIP_BYTES = b"\r\n \t"
_SCAN_VERSION = 1


def scan_fasta(path: PathLike, opener=None, chunk: int = 1 << 24) -> List[Tuple[str, int, int, int, int]]:
    """Read a FASTA once (plain, gzip or bgzip) and return its faidx rows
    ``(name, length, offset, linebases, linewidth)``, checking on the way that
    every sequence byte is one the tokenizer accepts and that record names are
    unique. Raises InputError naming the file, line and record otherwise."""
    path = Path(path)
    opener = opener or (lambda p: open(p, "rb") if compression_of(p) == "none" else gzip.open(p, "rb"))
    rows: List[list] = []
    seen: Dict[str, int] = {}
    cur: Optional[list] = None  # [name, length, offset, linebases, linewidth, header_line]
    lineno = 0  # lines before the current buffer
    pos = 0  # uncompressed offset of the current buffer
    carry = b""

    def bad_char(seg: bytes, seg_start_line: int, rec: str) -> None:
        rest = seg.translate(None, _SEQ_BYTES + _SKIP_BYTES)
        ch = rest[:1]
        off = seg.index(ch)
        line = seg_start_line + seg.count(b"\n", 0, off)
        raise InputError(path, f"line {line}: invalid character {ch.decode('latin-1')!r} in record {rec!r} "
                               f"(accepted: A C G T U N and IUPAC codes R Y K M S W B D H V, either case)")

    def seq_part(seg: bytes, seg_line: int, seg_pos: int) -> None:
        if cur is None:
            if seg.strip():
                raise InputError(path, f"line {seg_line}: sequence before the first '>' header")
            return
        if seg.translate(None, _SEQ_BYTES + _SKIP_BYTES):
            bad_char(seg, seg_line, cur[0])
        n = len(seg.translate(None, _SKIP_BYTES))
        if cur[3] < 0 and n:  # first sequence line of the record: faidx's linebases / linewidth
            lead = len(seg) - len(seg.lstrip(b"\r\n"))
            cur[2] = seg_pos + lead
            nl = seg.find(b"\n", lead)
            first = seg[lead:] if nl < 0 else seg[lead:nl + 1]
            cur[3] = len(first.translate(None, _SKIP_BYTES))
            cur[4] = len(first)
        cur[1] += n

    try:
        with opener(path) as fh:
            while True:
                block = fh.read(chunk)
                data = carry + block
                if block:
                    cut = data.rfind(b"\n") + 1
                    if cut == 0:
                        carry = data
                        continue
                    data, carry = data[:cut], data[cut:]
                else:
                    carry = b""
                if not data:
                    break
                i = 0
                while i < len(data):
                    h = 0 if (i == 0 and data.startswith(b">")) else data.find(b"\n>", i)
                    if h < 0:
                        seq_part(data[i:], lineno + 1 + data.count(b"\n", 0, i), pos + i)
                        break
                    if h != 0 or i != 0:
                        h += 1  # the '>' after the newline
                    if h > i:
                        seq_part(data[i:h], lineno + 1 + data.count(b"\n", 0, i), pos + i)
                    e = data.find(b"\n", h)
                    e = len(data) if e < 0 else e
                    hl = lineno + 1 + data.count(b"\n", 0, h)
                    words = data[h + 1:e].decode("latin-1").split()
                    name = words[0] if words else ""
                    if not name:
                        raise InputError(path, f"line {hl}: header without a name")
                    if name in seen:
                        raise InputError(path, f"line {hl}: duplicate record name {name!r} (first at line "
                                               f"{seen[name]}); record names must be unique")
                    seen[name] = hl
                    if cur is not None:
                        rows.append(cur)
                    cur = [name, 0, pos + e + 1, -1, -1]
                    i = e + 1
                lineno += data.count(b"\n")
                pos += len(data)
                if not block:
                    break
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(path, f"cannot read: {e}") from None
    if cur is not None:
        rows.append(cur)
    return [(r[0], r[1], r[2], max(r[3], 0), max(r[4], 0)) for r in rows]


def read_fai(fai: PathLike) -> Optional[List[Tuple[str, int, int, int, int]]]:
    """Rows of a .fai, or None when it cannot be parsed."""
    try:
        rows = []
        for line in Path(fai).read_text().splitlines():
            if line.strip():
                c = line.split("\t")
                rows.append((c[0], int(c[1]), int(c[2]), int(c[3]), int(c[4])))
        return rows
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None


def _fai_matches(fai_rows, scanned) -> bool:
    if fai_rows is None or len(fai_rows) != len(scanned):
        return False
    for a, b in zip(fai_rows, scanned):
        if a[0] != b[0] or a[1] != b[1]:
            return False
        if b[1] and (a[2], a[3], a[4]) != (b[2], b[3], b[4]):
            return False
    return True


# --------------------------------------------------------------------------- Genome
def fasta_path_of(genome) -> PathLike:
    """The FASTA path behind a path or an open ``pyfaidx.Fasta`` (accepted wherever a genome is)."""
    try:
        import pyfaidx
    except ImportError:  # pragma: no cover - a declared dependency
        return genome
    if isinstance(genome, pyfaidx.Fasta):
        return genome.filename
    return genome


class Genome:
    """Random access to a reference FASTA.

    Parameters
    ----------
    path: FASTA, plain, bgzip or plain gzip.
    cache_dir: where indexes / decompressed copies go when the FASTA's folder
        is not writable (default ``$MAMBADNA_CACHE`` or ``~/.cache/mambadna``).

    Coordinates are 0-based half-open. The pysam handle is opened on first use
    in each process and dropped when pickled.
    """

    def __init__(self, path: PathLike, cache_dir: Optional[PathLike] = None):
        path = fasta_path_of(path)
        self.path = Path(path)
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        self._fasta_path: Path  # file pysam opens
        self._fai: Optional[Path] = None
        self._gzi: Optional[Path] = None
        self._fh = None
        self._pid = None
        self._resolved: Dict[str, str] = {}
        self._prepare()
        fh = self._handle()
        self._contigs: List[str] = list(fh.references)
        self._lengths: Dict[str, int] = dict(zip(fh.references, (int(x) for x in fh.lengths)))
        if not self._contigs:
            raise InputError(self.path, "FASTA has no sequences")

    # ---------------------------------------------------------------- setup
    def _check_file(self) -> str:
        p = self.path
        check_input_file(p, "FASTA file")
        try:
            comp = compression_of(p)
            with (open(p, "rb") if comp == "none" else gzip.open(p, "rb")) as fh:
                head = fh.read(1 << 16)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(p, f"cannot read: {e}") from None
        stripped = head.lstrip()
        if not stripped:
            raise InputError(p, "empty FASTA (no sequences)")
        if not stripped.startswith(b">"):
            raise InputError(p, "not a FASTA file (first non-blank character is not '>')")
        return comp

    def _cache(self) -> Path:
        d = cache_root(self._cache_dir)
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(d, f"cannot create cache folder: {e}") from None
        return d

    def _prepare(self) -> None:
        comp = self._check_file()
        src = self.path
        if comp == "gzip":
            src = self._decompress_to_cache()
            comp = "none"
        self._fasta_path = src
        fai = Path(str(src) + ".fai")
        gzi = Path(str(src) + ".gzi") if comp == "bgzf" else None
        if fai.exists() and (gzi is None or gzi.exists()) and fai.stat().st_mtime >= src.stat().st_mtime - 1:
            self._fai, self._gzi = fai, gzi
        elif _dir_writable(src.parent):
            self._build_index(src, fai, gzi)
            self._fai, self._gzi = fai, gzi
        else:
            self._fai, self._gzi = self._cached_index(src, comp, rebuild=False)
        self._validate(comp)

    def _cached_index(self, src: Path, comp: str, rebuild: bool):
        key = _cache_key(src)
        d = self._cache()
        cfai = d / f"{src.name}.{key}.fai"
        cgzi = d / f"{src.name}.{key}.gzi" if comp == "bgzf" else None
        if rebuild or not (cfai.exists() and (cgzi is None or cgzi.exists())):
            self._build_index(src, cfai, cgzi)
        return cfai, cgzi

    def _validate(self, comp: str) -> None:
        """Check every sequence byte and name once (cached per file version), and
        that the index describes this very file; a stale index is rebuilt."""
        import json

        src = self._fasta_path
        stamp = None
        with contextlib.suppress(OSError):
            stamp = cache_root(self._cache_dir) / "validated" / f"{src.name}.{_cache_key(src)}.v{_SCAN_VERSION}.json"
        rows = None
        if stamp is not None and stamp.is_file():
            with contextlib.suppress(OSError, ValueError):
                rows = [tuple(r) for r in json.loads(stamp.read_text())]
        if rows is None:
            try:
                rows = scan_fasta(src)
            except InputError as e:
                raise InputError(self.path, e.problem) from None
            if stamp is not None:
                with contextlib.suppress(OSError):
                    stamp.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_path(stamp) as tmp:
                        tmp.write_text(json.dumps(rows))
        if _fai_matches(read_fai(self._fai), rows):
            return
        log.warning("%s does not describe %s (stale index from an earlier version of the file); rebuilding it",
                    self._fai, self.path)
        beside = Path(str(src) + ".fai")
        if self._fai == beside and _dir_writable(src.parent):
            gzi = Path(str(src) + ".gzi") if comp == "bgzf" else None
            self._build_index(src, beside, gzi)
            self._fai, self._gzi = beside, gzi
        else:
            self._fai, self._gzi = self._cached_index(src, comp, rebuild=True)
        if not _fai_matches(read_fai(self._fai), rows):
            raise InputError(self.path, f"faidx index {self._fai} does not match the file even after rebuilding")

    def _build_index(self, src: Path, fai: Path, gzi: Optional[Path]) -> None:
        import contextlib

        import pysam

        quiet_htslib()
        with contextlib.ExitStack() as stack:
            tmp_fai = stack.enter_context(atomic_path(fai))
            args = [str(src), "--fai-idx", str(tmp_fai)]
            if gzi is not None:
                args += ["--gzi-idx", str(stack.enter_context(atomic_path(gzi)))]
            try:
                pysam.faidx(*args)
            except (pysam.SamtoolsError, OSError) as e:
                why = _diagnose_fasta(src, open_text)
                raise InputError(self.path, f"malformed FASTA: {why}") from e
            if tmp_fai.stat().st_size == 0:
                raise InputError(self.path, "FASTA has no sequences")
            for p in args[2::2]:
                publish_mode(Path(p))

    def _decompress_to_cache(self) -> Path:
        key = _cache_key(self.path)
        name = self.path.name[:-3] if self.path.name.endswith(".gz") else self.path.name + ".fa"
        out = self._cache() / f"{key}-{name}"
        if out.exists():
            return out
        log.info("%s is plain gzip (not bgzip), which faidx cannot index; decompressing it once to %s",
                 self.path, out)
        try:
            with atomic_path(out) as tmp, gzip.open(self.path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                publish_mode(tmp)
        except (OSError, EOFError, zlib.error) as e:
            raise InputError(self.path, f"cannot decompress gzip FASTA: {e}") from None
        return out

    # ---------------------------------------------------------------- handle
    def _handle(self):
        if self._fh is None or self._pid != os.getpid():
            import pysam

            quiet_htslib()
            try:
                self._fh = pysam.FastaFile(
                    str(self._fasta_path),
                    filepath_index=str(self._fai) if self._fai else None,
                    filepath_index_compressed=str(self._gzi) if self._gzi else None,
                )
            except (OSError, ValueError) as e:
                raise InputError(self.path, f"cannot open FASTA: {e}") from None
            self._pid = os.getpid()
        return self._fh

    def close(self) -> None:
        """Close the pysam handle (it is reopened on next use)."""
        if self._fh is not None and self._pid == os.getpid():
            self._fh.close()
        self._fh = None
        self._pid = None

    def __enter__(self) -> "Genome":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_fh"] = None
        state["_pid"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Genome({str(self.path)!r}, {len(self._contigs)} contigs, {sum(self._lengths.values())} bp)"

    # ---------------------------------------------------------------- queries
    @property
    def contigs(self) -> List[str]:
        """Contig names in file order."""
        return list(self._contigs)

    @property
    def lengths(self) -> Dict[str, int]:
        """Contig name -> length in bases."""
        return dict(self._lengths)

    def resolve_contig(self, name: str) -> str:
        """Map ``name`` to a contig of this FASTA (exact, then with/without
        ``chr``, then chrM/MT aliases). Raises InputError naming the FASTA and
        listing a few of its contigs when absent."""
        hit = self._resolved.get(name)
        if hit is not None:
            return hit
        hit = match_contig(name, self._contigs)
        if hit is None:
            few = ", ".join(self._contigs[:8]) + (", ..." if len(self._contigs) > 8 else "")
            raise InputError(self.path, f"contig {name!r} not found (contigs: {few})")
        self._resolved[name] = hit
        return hit

    def fetch(self, contig: str, start: int, end: int, strand: str = "+", pad: bool = True,
              softmask: bool = False) -> str:
        """Sequence of ``contig[start:end]`` (0-based half-open) as a str.

        pad=True: positions outside [0, len) are 'N' (result length end-start);
        pad=False: the interval is clipped to the contig. strand '-' returns the
        reverse complement. Upper case unless ``softmask=True``.
        """
        name = self.resolve_contig(contig)
        start, end = int(start), int(end)
        if end < start:
            raise InputError(self.path, f"bad interval {contig}:{start}-{end} (end < start)")
        L = self._lengths[name]
        s, e = max(0, start), min(L, end)
        if e > s:
            seq = self._handle().fetch(name, s, e)
        else:
            seq = ""
        if not softmask:
            seq = seq.upper()
        if pad:
            left = min(max(0, -start), end - start)
            right = max(0, end - max(L, start))
            if left or right:
                seq = "N" * left + seq + "N" * right
        if strand == "-":
            if softmask:
                seq = _rc_keep_case(seq)
            else:
                seq = reverse_complement_str(seq)
        elif strand not in ("+", "."):
            raise InputError(self.path, f"bad strand {strand!r} (use '+' or '-')")
        return seq

    def fetch_ids(self, contig: str, start: int, end: int, strand: str = "+", pad: bool = True) -> np.ndarray:
        """Token ids (end-start,) uint8 of the interval (see :meth:`fetch`)."""
        seq = self.fetch(contig, start, end, strand=strand, pad=pad)
        return encode_input(seq, self.path, name=f"{contig}:{start}-{end}")


_RC_TABLE = str.maketrans("ACGTNacgtnRYKMSWBDHVrykmswbdhvUu", "TGCANtgcanYRMKSWVHDByrmkswvhdbAa")


def _rc_keep_case(seq: str) -> str:
    return seq.translate(_RC_TABLE)[::-1]
