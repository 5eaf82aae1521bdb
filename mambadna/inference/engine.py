"""Embedding engine: exact chunked inference for any sequence length.

Everything here works on token ids and a :class:`~mambadna.model.encoder.MambaDNA`;
input formats (FASTA, BED, BAM, VCF) live in :mod:`mambadna.api`.

Exactness. A Mamba mixer is a causal conv plus a linear recurrence, so one
direction over a long sequence equals the same direction over consecutive
chunks when the conv context (``d_conv - 1`` inputs) and the SSM state are
carried from chunk to chunk (:meth:`MambaMixer.forward_direction`).

* Causal models: one pass over the chunks, left to right, through all layers;
  each layer keeps its own conv context and state. Device memory is bounded
  by the chunk; nothing of length L is held unless per-token output is asked.
* Bidirectional models: layer by layer. A layer's input (batch, L, d_model)
  sits in host memory. Pass 1 runs the forward direction left to right and
  keeps only the (small) conv context and SSM state at each chunk boundary.
  Pass 2 runs right to left: per chunk the reverse direction (state carried)
  and the forward direction again from its saved boundary state, then
  ``h + out_proj(y_fwd + y_rev)`` overwrites the chunk in place (the chunk's
  old value is no longer needed by either direction). So one layer's
  activations live on the host, and the device holds one chunk plus the
  boundary states. Carried and saved states own their storage (never views
  into a chunk's buffers, which would keep one chunk-sized buffer alive per
  boundary: device memory growing with L); tests/test_embed.py checks that
  no tensor longer than the chunk reaches the model or the device.
* Batches of unequal length are right-padded. That is exact for causal
  models (padding only follows real tokens). For bidirectional models in
  whole-sequence mode the reverse direction runs on a left-aligned copy
  (padding first, scanned last), so it is exact too. Bidirectional batches in
  chunked mode, and RC-equivariant batches, hold equal lengths only.

Streaming (causal models): :class:`Stream` feeds one token (or a block) at a
time with constant memory through the scan's single-step update.
"""
from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from mambadna.errors import InputError
from mambadna.inference.pooling import normalize_pool, selected
from mambadna.model.encoder import MambaDNA
from mambadna.tokenizer import PAD, reverse_complement

Tensor = torch.Tensor

DEFAULT_CHUNK = {"cuda": 1 << 17, "cpu": 1 << 12}
DEFAULT_MAX_TOKENS = {"cuda": 1 << 20, "cpu": 1 << 14}
DEFAULT_BATCH_SIZE = {"cuda": 256, "cpu": 64}  # a cap; the token budget usually binds first
PAD_FACTOR = 1.25  # a ragged batch may hold at most 25% padding


# --------------------------------------------------------------------------- helpers
def device_kind(device: Union[str, torch.device]) -> str:
    return "cuda" if torch.device(device).type == "cuda" else "cpu"


def default_chunk_size(device: Union[str, torch.device]) -> int:
    """Positions per chunk when none is given: 131072 on CUDA, 4096 on CPU."""
    return DEFAULT_CHUNK[device_kind(device)]


def default_max_tokens(device: Union[str, torch.device]) -> int:
    """Token budget (batch x padded length) of one batch: 2^20 on CUDA, 2^14 on CPU."""
    return DEFAULT_MAX_TOKENS[device_kind(device)]


def resolve_layer(model: MambaDNA, layer: int) -> Tuple[int, bool]:
    """Map ``layer`` (negative counts from the end) to (block index, final_norm).

    The final RMSNorm is applied after the last block only (as in
    :meth:`MambaDNA.hidden_states`)."""
    n = model.config.n_layers
    try:
        layer = int(layer)
    except (TypeError, ValueError):
        raise InputError(None, f"layer must be an integer, got {layer!r}") from None
    if not -n <= layer < n:
        raise InputError(None, f"layer {layer} out of range for a model with {n} layers "
                               f"(use {-n}..{n - 1})")
    stop = layer % n
    return stop, stop == n - 1


def _as_ids(seq) -> np.ndarray:
    if isinstance(seq, torch.Tensor):
        seq = seq.detach().cpu().numpy()
    arr = np.asarray(seq)
    if arr.ndim != 1:
        raise InputError(None, f"token array must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise InputError(None, f"token array must hold integer ids, got dtype {arr.dtype}")
    return arr


# --------------------------------------------------------------------------- sinks
class _Sink:
    """Receives the output of the last requested layer chunk by chunk.

    ``__call__(s, e, h)``: h (batch, e - s, D) on the device holds padded
    positions [s, e). Positions >= a row's length are ignored. With
    ``mirror`` the rows are read reversed (position p of row b is reported as
    length_b - 1 - p): that aligns a reverse-complement pass with the forward
    strand. Pooled modes accumulate on the device; ``none`` adds into a host
    buffer ``out`` (batch, L, D) fp32, scaled by ``weight``.
    """

    def __init__(self, mode: str, lengths: Tensor, L: int, D: int, device, center_width: int = 64,
                 mirror: bool = False, weight: float = 1.0, out: Optional[Tensor] = None):
        self.mode, self.mirror, self.weight = mode, mirror, weight
        self.lengths = lengths.to(device, non_blocking=True)  # pinned by the caller on CUDA
        self.center_width = center_width
        B = lengths.shape[0]
        self.D = D
        if mode == "none":
            self.out = out if out is not None else torch.zeros(B, L, D, dtype=torch.float32)
            self._len_cpu = lengths.cpu()
        elif mode == "max":
            self.acc = torch.full((B, D), float("-inf"), device=device)
        else:
            self.acc = torch.zeros(B, D, device=device)
            self.count = torch.zeros(B, device=device)

    @property
    def writes_in_place(self) -> bool:
        """True when the sink just stores chunks into ``out`` (so the engine
        may use ``out`` as its own working buffer)."""
        return self.mode == "none" and not self.mirror and self.weight == 1.0

    def __call__(self, s: int, e: int, h: Tensor) -> None:
        if self.mode == "none":
            self._store(s, e, h)
            return
        dev = h.device
        P = torch.arange(s, e, device=dev)[None, :].expand(h.shape[0], -1)
        lens = self.lengths[:, None]
        valid = P < lens
        if self.mirror:
            P = lens - 1 - P
        hf = h.float()
        if self.mode == "max":
            self.acc = torch.maximum(self.acc, hf.masked_fill(~valid[..., None], float("-inf")).amax(1))
            return
        w = valid & selected(self.mode, P, lens, self.center_width)
        wf = w.to(hf.dtype)
        self.acc += torch.einsum("bl,bld->bd", wf, hf)
        self.count += wf.sum(1)

    def _store(self, s: int, e: int, h: Tensor) -> None:
        hc = h.float().cpu()
        if self.writes_in_place:
            self.out[:, s:e] = hc
            return
        lens = self._len_cpu[:, None]
        P = torch.arange(s, e)[None, :].expand(hc.shape[0], -1)
        valid = P < lens
        rows, cols = valid.nonzero(as_tuple=True)
        tgt = P[rows, cols]
        if self.mirror:
            tgt = lens[rows, 0] - 1 - tgt
        self.out.index_put_((rows, tgt), hc[rows, cols] * self.weight, accumulate=True)

    def result(self) -> Tensor:
        """Pooled (batch, D) fp32 on the device, or the host buffer (batch, L, D)."""
        if self.mode == "none":
            return self.out
        if self.mode == "max":
            return self.acc
        return self.acc / self.count.clamp(min=1)[:, None]


# --------------------------------------------------------------------------- engines
def _layer_forward_dual(model: MambaDNA, i: int, h: Tensor, shift: Tensor) -> Tensor:
    """One bidirectional block on a right-padded ragged batch, exactly: the
    reverse direction runs on a left-aligned copy. shift: (batch,) L - length."""
    blk = model.layers[i]
    B, L, D = h.shape
    ar = torch.arange(L, device=h.device)[None, :]
    to_left = (ar - shift[:, None]) % L
    back = (ar + shift[:, None]) % L
    hn = blk.norm_in(h)
    yf, _, _ = blk.direction(hn, False)
    hn_l = torch.gather(hn, 1, to_left[..., None].expand(-1, -1, D))
    yr_l, _, _ = blk.direction(hn_l, True)
    yr = torch.gather(yr_l, 1, back[..., None].expand(-1, -1, yr_l.shape[-1]))
    return blk.residual(h, (yf.float() + yr.float()).to(yf.dtype))


def to_host_async(t: Tensor) -> Tuple[Tensor, Optional["torch.cuda.Event"]]:
    """(host tensor, event): a CUDA tensor copied into pinned host memory without
    waiting (read it after ``event.synchronize()``); a host tensor as it is."""
    if not t.is_cuda:
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


@torch.no_grad()
def _run_whole(model: MambaDNA, ids: Tensor, lengths: Tensor, stop: int, fnorm: bool,
               sink: Callable, post: Optional[Callable] = None) -> None:
    """Whole batch at once on the device. ids: (batch, L) right-padded."""
    L = ids.shape[1]
    ragged = bool((lengths != L).any())
    if model.config.bidirectional and ragged:
        if model.config.rc_equivariant:
            raise InputError(None, "internal: RC-equivariant batches must hold equal lengths")
        h = model.embed_tokens(ids)
        shift = (L - lengths).to(ids.device)
        for i in range(stop + 1):
            h = _layer_forward_dual(model, i, h, shift)
        if fnorm:
            h = model.final_norm(h)
    else:
        h = model.hidden_states(ids, layer=stop, final_norm=fnorm)
    sink(0, L, post(h) if post else h)


def _chunks(L: int, chunk: int) -> List[Tuple[int, int]]:
    return [(s, min(L, s + chunk)) for s in range(0, L, chunk)]


@torch.no_grad()
def _run_causal_chunked(model: MambaDNA, ids: Tensor, stop: int, fnorm: bool, chunk: int,
                        device, sink: Callable, post: Optional[Callable] = None,
                        advance: Optional[Callable[[float], None]] = None) -> None:
    """Causal model: one pass over chunks through blocks 0..stop, with each
    block's conv context and SSM state carried. ids: (batch, L) host or device."""
    if model.config.rc_equivariant:
        raise InputError(None, "chunked mode is not supported for RC-equivariant models; "
                               "use chunk_size=None or a chunk at least as long as the sequence")
    L = ids.shape[1]
    ctx: List[Optional[Tensor]] = [None] * (stop + 1)
    st: List[Optional[Tensor]] = [None] * (stop + 1)
    for s, e in _chunks(L, chunk):
        h = model.embed_tokens(ids[:, s:e].to(device))
        for i in range(stop + 1):
            h, ctx[i], st[i] = model.layers[i].step(h, ctx[i], st[i])
        if fnorm:
            h = model.final_norm(h)
        sink(s, e, post(h) if post else h)
        del h  # free this chunk before the next one is allocated
        if advance:
            advance((e - s) / L)


def _host_buffer(shape, device) -> Tensor:
    """fp32 host tensor; page-locked when the model is on a GPU (faster copies)."""
    if torch.device(device).type == "cuda":
        try:
            return torch.empty(shape, dtype=torch.float32, pin_memory=True)
        except RuntimeError:  # pinning can fail for very large buffers
            pass
    return torch.empty(shape, dtype=torch.float32)


@torch.no_grad()
def _run_bidirectional_chunked(model: MambaDNA, ids: Tensor, stop: int, fnorm: bool, chunk: int,
                               device, sink: Callable, post: Optional[Callable] = None,
                               advance: Optional[Callable[[float], None]] = None,
                               buffer: Optional[Tensor] = None) -> None:
    """Bidirectional model, layer by layer, equal-length batch ids (batch, L).

    Host memory: one (batch, L, d_model) fp32 buffer (``buffer`` when given,
    e.g. the sink's output). Device memory: one chunk plus per-boundary
    states (n_chunks x batch x d_inner x d_state)."""
    if model.config.rc_equivariant:
        raise InputError(None, "chunked mode is not supported for RC-equivariant models; "
                               "use chunk_size=None or a chunk at least as long as the sequence")
    B, L = ids.shape
    D = model.config.d_model
    chunks = _chunks(L, chunk)
    H = buffer if buffer is not None else _host_buffer((B, L, D), device)
    for s, e in chunks:
        H[:, s:e].copy_(model.embed_tokens(ids[:, s:e].to(device)).float())
    steps = (stop + 1) * 3 * len(chunks)  # pass 1 ~ 1 unit, pass 2 ~ 2 units per chunk
    for i in range(stop + 1):
        blk = model.layers[i]
        last = i == stop
        # pass 1: forward direction, keep the state entering each chunk
        saved: List[Tuple[Optional[Tensor], Optional[Tensor]]] = []
        ctx = state = None
        for s, e in chunks:
            saved.append((ctx, state))
            hn = blk.norm_in(H[:, s:e].to(device, non_blocking=True))
            y, ctx, state = blk.direction(hn, False, ctx, state)
            del hn, y  # only the boundary state is kept
            if advance:
                advance(1 / steps)
        # pass 2: reverse direction right to left, forward recomputed per chunk
        rctx = rstate = None
        for c in range(len(chunks) - 1, -1, -1):
            s, e = chunks[c]
            x = H[:, s:e].to(device, non_blocking=True)
            hn = blk.norm_in(x)
            yr, rctx, rstate = blk.direction(hn, True, rctx, rstate)
            yf, _, _ = blk.direction(hn, False, *saved[c])
            saved[c] = (None, None)
            y = (yf.float() + yr.float()).to(yf.dtype)
            out = blk.residual(x, y)
            if last:
                if fnorm:
                    out = model.final_norm(out)
                sink(s, e, post(out) if post else out)
            else:
                H[:, s:e].copy_(out.float())
            del x, hn, yr, yf, y, out  # free this chunk before the next one is allocated
            if advance:
                advance(2 / steps)


# --------------------------------------------------------------------------- batching
def plan_batches(lengths: Sequence[int], batch_size: int, max_tokens: int,
                 equal_lengths: Callable[[int], bool]) -> List[List[int]]:
    """Group sequence indices into batches by length.

    Indices are sorted by length; a batch closes when it holds ``batch_size``
    sequences, when (count x longest) would pass ``max_tokens`` (one sequence
    always fits), when padding would pass 25%, or -- when
    ``equal_lengths(length)`` is True -- when the length changes.
    Returns lists of indices into ``lengths``.
    """
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    batches: List[List[int]] = []
    cur: List[int] = []
    total = 0
    for k in order:
        n = lengths[k]
        if cur:
            cnt = len(cur) + 1
            close = (cnt > batch_size or cnt * n > max_tokens
                     or cnt * n > PAD_FACTOR * (total + n)
                     or ((equal_lengths(n) or equal_lengths(lengths[cur[0]])) and n != lengths[cur[0]]))
            if close:
                batches.append(cur)
                cur, total = [], 0
        cur.append(k)
        total += n
    if cur:
        batches.append(cur)
    return batches


_END = object()


def prefetch(items: Iterable, depth: int = 64) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead, so that
    input preparation (file reading, tokenising, window making) overlaps the
    device work of the consumer. Exceptions reach the consumer; closing the
    returned generator stops the thread."""
    import queue
    import threading

    q: "queue.Queue" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        it = iter(items)
        try:
            for x in it:
                if not put((True, x)):
                    break
            put((True, _END))
        except BaseException as e:  # handed to the consumer
            put((False, e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=work, name="mambadna-prefetch", daemon=True)
    t.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                raise x
            if x is _END:
                return
            yield x
    finally:
        stop.set()
        t.join()


class _Progress:
    def __init__(self, total: Optional[int], enabled: Optional[bool], desc: str = "embedding"):
        if enabled is None:
            interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
            enabled = total is not None and total >= 200_000 and interactive
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="bp", unit_scale=True, desc=desc, dynamic_ncols=True,
                            leave=False)

    def update(self, n: float) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- public
class Embedder:
    """Runs a :class:`MambaDNA` over token-id sequences of any length.

    model: a MambaDNA (eval mode is set); device: where it runs;
    pool: "mean", "center", "first", "last", "max" or "none"/None (per token);
    layer: block index (negative from the end; -1 = last block + final norm);
    rc_average: average with the reverse complement's output, aligned to the
    forward strand (per token: h(x)[i] + h(rc x)[L-1-i], halved; pooled:
    pooling of that average -- for "max", the mean of the two maxima);
    batch_size: sequences per batch; max_tokens: batch x padded length per
    batch; chunk_size: positions per device step for long sequences (None =
    device default); center_width: window of "center" pooling;
    precision: "fp32", or "bf16" (autocast, CUDA only); head: "hidden" or
    "logits" (LM logits of the last layer, per token);
    progress: True / False / None (auto: long inputs on a terminal).
    """

    def __init__(self, model: MambaDNA, device: Union[str, torch.device, None] = None,
                 pool: Optional[str] = "mean", layer: int = -1, rc_average: bool = False,
                 batch_size: Optional[int] = None, max_tokens: Optional[int] = None,
                 chunk_size: Optional[int] = None, center_width: int = 64,
                 precision: str = "fp32", head: str = "hidden", progress: Optional[bool] = None):
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.cfg = model.config
        self.pool = normalize_pool(pool)
        self.stop, self.fnorm = resolve_layer(model, layer)
        self.rc_average = bool(rc_average)
        self.batch_size = int(batch_size or DEFAULT_BATCH_SIZE[device_kind(self.device)])
        self.max_tokens = int(max_tokens or default_max_tokens(self.device))
        self.chunk = int(chunk_size or default_chunk_size(self.device))
        if self.batch_size < 1 or self.max_tokens < 1 or self.chunk < 1:
            raise InputError(None, "batch_size, max_tokens and chunk_size must be positive")
        self.center_width = int(center_width)
        if precision not in ("fp32", "bf16"):
            raise InputError(None, f"precision must be 'fp32' or 'bf16', got {precision!r}")
        self.precision = precision
        if head not in ("hidden", "logits"):
            raise InputError(None, f"head must be 'hidden' or 'logits', got {head!r}")
        if head == "logits":
            if not self.fnorm:
                raise InputError(None, "logits need the last layer (layer=-1)")
            if self.rc_average:
                raise InputError(None, "rc_average is not defined for logits")
        self.head = head
        self.progress = progress
        self.out_dim = self.cfg.vocab_size if head == "logits" else self.cfg.d_model

    # -- per batch ---------------------------------------------------------
    def _needs_equal(self, n: int) -> bool:
        if self.cfg.rc_equivariant:
            return True
        return self.cfg.bidirectional and n > self.chunk

    def _autocast(self):
        if self.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        import contextlib

        return contextlib.nullcontext()

    @torch.no_grad()
    def hidden(self, ids: Tensor, layer: int = -1) -> Tensor:
        """Hidden states of equal-length ids (batch, L) on the device, in the
        engine's precision: (batch, L, d_model) after block ``layer`` (the last
        block is followed by the final norm). No host copy, no synchronisation."""
        stop, fnorm = resolve_layer(self.model, layer)
        with self._autocast():
            return self.model.hidden_states(ids.to(self.device, non_blocking=True), layer=stop, final_norm=fnorm)

    def _run_one(self, ids: Tensor, lengths: Tensor, sink: _Sink, advance) -> None:
        L = ids.shape[1]
        post = self.model.lm_logits if self.head == "logits" else None
        with self._autocast():
            if L <= self.chunk:
                _run_whole(self.model, ids.to(self.device, non_blocking=True),
                           lengths.to(self.device, non_blocking=True), self.stop,
                           self.fnorm, sink, post)
                advance(1.0)
            elif not self.cfg.bidirectional:
                _run_causal_chunked(self.model, ids, self.stop, self.fnorm, self.chunk, self.device,
                                    sink, post, advance)
            else:
                buf = sink.out if (sink.writes_in_place and self.head == "hidden") else None
                _run_bidirectional_chunked(self.model, ids, self.stop, self.fnorm, self.chunk,
                                           self.device, sink, post, advance, buf)

    def _launch(self, seqs: Sequence[np.ndarray], advance: Optional[Callable[[float], None]] = None):
        """Start one batch on the device; :meth:`_finish` turns the handle into arrays.
        Pooled results are copied to pinned host memory asynchronously."""
        lens = [len(s) for s in seqs]
        if min(lens) == 0:
            raise InputError(None, "cannot embed an empty sequence")
        B, L = len(seqs), max(lens)
        cuda = self.device.type == "cuda"
        host = np.full((B, L), PAD, dtype=np.int64)
        for b, s in enumerate(seqs):
            host[b, : lens[b]] = s
        ids = torch.from_numpy(host)
        if cuda:
            ids = ids.pin_memory()
        lengths = torch.tensor(lens, dtype=torch.long)
        if cuda:  # pinned: the copies to the device need not wait for the batch before
            lengths = lengths.pin_memory()
        total_frac = 2.0 if self.rc_average else 1.0
        bases = float(sum(lens))
        adv = (lambda f: advance(f * bases / total_frac)) if advance else (lambda f: None)
        w = 0.5 if self.rc_average else 1.0
        sink = _Sink(self.pool, lengths, L, self.out_dim, self.device, self.center_width, weight=w)
        self._run_one(ids, lengths, sink, adv)
        if self.rc_average:
            rc = torch.from_numpy(np.ascontiguousarray(host.copy()))
            for b, s in enumerate(seqs):
                rc[b, : lens[b]] = torch.from_numpy(reverse_complement(np.asarray(s)).astype(np.int64))
            if cuda:
                rc = rc.pin_memory()
            out = sink.out if self.pool == "none" else None
            sink_rc = _Sink(self.pool, lengths, L, self.out_dim, self.device, self.center_width,
                            mirror=True, weight=w, out=out)
            self._run_one(rc, lengths, sink_rc, adv)
            res = sink.out if self.pool == "none" else (sink.result() + sink_rc.result()) / 2
        else:
            res = sink.result()
        res, event = to_host_async(res.float())
        return lens, res, event

    def _finish(self, handle) -> List[np.ndarray]:
        lens, res, event = handle
        if event is not None:
            event.synchronize()
        res = res.float().numpy()
        if self.pool == "none":
            return [res[b, : n] for b, n in enumerate(lens)]
        return [res[b] for b in range(len(lens))]

    def embed_batch(self, seqs: Sequence[np.ndarray], advance: Optional[Callable[[float], None]] = None) -> List[np.ndarray]:
        """Embed one batch of id arrays (any lengths the batch plan allows).

        Returns one array per sequence: pooled (D,) or per-token (L_i, D),
        float32 (D = d_model, or vocab_size for logits)."""
        return self._finish(self._launch(seqs, advance))

    # -- many sequences ----------------------------------------------------
    def iter_embed(self, seqs: Iterable, block_tokens: Optional[int] = None,
                   total: Optional[int] = None) -> Iterator[np.ndarray]:
        """Embed an iterable of id arrays (1-D integer numpy/torch), yielding
        one result per input in input order. The iterable is read in blocks
        of about ``block_tokens`` bases (default 8 x max_tokens), each block
        sorted into length batches, so memory is bounded by a block
        (per-token results: 2 x max_tokens). ``total``: bases expected, for
        the progress bar."""
        block_tokens = int(block_tokens or (2 if self.pool == "none" else 8) * self.max_tokens)
        bar = _Progress(total, self.progress)
        try:
            block: List[np.ndarray] = []
            ntok = 0
            for s in prefetch(seqs):
                s = _as_ids(s)
                block.append(s)
                ntok += len(s)
                if ntok >= block_tokens:
                    yield from self._block(block, bar)
                    block, ntok = [], 0
            if block:
                yield from self._block(block, bar)
        finally:
            bar.close()

    def _block(self, block: List[np.ndarray], bar: _Progress) -> Iterator[np.ndarray]:
        lens = [len(s) for s in block]
        out: List[Optional[np.ndarray]] = [None] * len(block)
        pending = None  # the device runs batch k+1 while batch k's results come back
        for idx in plan_batches(lens, self.batch_size, self.max_tokens, self._needs_equal):
            handle = (idx, self._launch([block[k] for k in idx], bar.update))
            if pending is not None:
                for k, r in zip(pending[0], self._finish(pending[1])):
                    out[k] = r
            pending = handle
        if pending is not None:
            for k, r in zip(pending[0], self._finish(pending[1])):
                out[k] = r
        yield from out

    def embed(self, seqs: Sequence) -> List[np.ndarray]:
        """Embed a list of id arrays; returns a list of arrays in input order
        (pooled (D,) or per-token (L_i, D))."""
        seqs = [_as_ids(s) for s in seqs]
        total = sum(len(s) for s in seqs)
        return list(self.iter_embed(seqs, block_tokens=max(total, 1), total=total))


def stack_results(results: List[np.ndarray], pooled: bool) -> Union[np.ndarray, List[np.ndarray]]:
    """Pooled -> (N, D); per-token -> (N, L, D) when all lengths agree, else the list."""
    if not results:
        return np.zeros((0, 0), dtype=np.float32)
    if pooled or len({r.shape for r in results}) == 1:
        return np.stack(results)
    return results


# --------------------------------------------------------------------------- streaming
class Stream:
    """Recurrent inference for a causal model: constant memory per step.

    Each block keeps its conv context (batch, d_conv-1, d_inner) and SSM
    state (batch, d_inner, d_state) fp32. :meth:`step` feeds one token per
    sequence (single-step scan update); :meth:`feed` feeds a block of tokens
    (chunked scan, same result). Outputs equal the parallel forward pass.
    """

    def __init__(self, model: MambaDNA, batch_size: int = 1, layer: int = -1,
                 device: Union[str, torch.device, None] = None):
        cfg = model.config
        if cfg.bidirectional:
            raise InputError(None, "streaming needs a causal model; this one is bidirectional")
        if cfg.rc_equivariant:
            raise InputError(None, "streaming is not supported for RC-equivariant models")
        self.model = model.eval()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.batch_size = int(batch_size)
        self.stop, self.fnorm = resolve_layer(model, layer)
        self.position = 0
        self.reset()

    def reset(self) -> None:
        """Start over: empty context, zero states."""
        cfg = self.model.config
        B = self.batch_size
        self._ctx = [torch.zeros(B, cfg.d_conv - 1, cfg.d_inner, device=self.device)
                     for _ in range(self.stop + 1)]
        self._state = [torch.zeros(B, cfg.d_inner, cfg.d_state, dtype=torch.float32, device=self.device)
                       for _ in range(self.stop + 1)]
        self.position = 0
        self._last: Optional[Tensor] = None

    def _ids(self, tokens, single: bool) -> Tensor:
        from mambadna.tokenizer import encode

        if isinstance(tokens, (str, bytes)):
            tokens = encode(tokens)
        t = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
        t = t.to(torch.long)
        if single:  # one token per sequence -> (batch, 1)
            t = t.reshape(-1, 1)
        elif t.dim() == 1:  # a block for a single-sequence stream -> (1, L)
            t = t[None, :]
        if t.dim() != 2 or t.shape[0] != self.batch_size or t.shape[1] == 0:
            raise InputError(None, f"stream holds {self.batch_size} sequence(s); got tokens of shape "
                                   f"{tuple(t.shape)}")
        return t.to(self.device)

    @torch.no_grad()
    def _advance(self, ids: Tensor) -> Tensor:
        m = self.model
        h = m.embed_tokens(ids)
        for i in range(self.stop + 1):
            h, self._ctx[i], self._state[i] = m.layers[i].step(h, self._ctx[i], self._state[i])
        if self.fnorm:
            h = m.final_norm(h)
        self.position += ids.shape[1]
        self._last = h[:, -1]
        return h

    def step(self, tokens) -> np.ndarray:
        """Feed one token per sequence: an id, a base letter, or (batch,) ids.
        Returns the hidden state at that position, (batch, d_model) float32."""
        h = self._advance(self._ids(tokens, True))
        return h[:, 0].float().cpu().numpy()

    def feed(self, tokens) -> np.ndarray:
        """Feed a block of tokens: a string, (L,) ids (batch 1) or (batch, L)
        ids. Returns hidden states (batch, L, d_model) float32."""
        return self._advance(self._ids(tokens, False)).float().cpu().numpy()

    @torch.no_grad()
    def next_token_logits(self) -> np.ndarray:
        """LM logits (batch, vocab_size) for the token after the last one fed
        (needs layer=-1)."""
        if self._last is None:
            raise InputError(None, "feed at least one token first")
        if not self.fnorm:
            raise InputError(None, "next-token logits need the stream's layer to be -1")
        return self.model.lm_logits(self._last[:, None])[:, 0].float().cpu().numpy()
