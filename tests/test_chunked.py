"""Exact length-chunked training of a block: output and every gradient equal the whole-length block,
and only the block inputs and chunk-boundary states are kept for backward."""
import gc

import pytest
import torch

from mambadna.model.config import MemoryConfig
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mambadna.model.chunked import chunked_block
from mambadna.model.config import ModelConfig
from mambadna.model.encoder import MambaDNA


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 16, 36])
def test_chunked_block_equals_whole(bidirectional, chunk):
    torch.manual_seed(0)
    m = MambaDNA(ModelConfig(d_model=16, n_layers=1, d_state=4, bidirectional=bidirectional))
    blk = m.layers[0]
    h = torch.randn(2, 37, 16, requires_grad=True)
    w = torch.randn(2, 37, 16)
    (blk(h) * w).sum().backward()
    ref = {n: p.grad.clone() for n, p in blk.named_parameters()}
    gh = h.grad.clone()
    out = blk(h).detach()
    blk.zero_grad()
    h.grad = None
    out2 = chunked_block(blk, h, chunk)
    (out2 * w).sum().backward()
    torch.testing.assert_close(out2.detach(), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h.grad, gh, atol=1e-5, rtol=1e-4)
    for n, p in blk.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


def test_model_with_layer_chunk_matches_plain_training_step():
    torch.manual_seed(1)
    m = MambaDNA(ModelConfig(d_model=16, n_layers=2, d_state=4)).train()
    ids = torch.randint(7, 11, (2, 40))
    m(ids).logsumexp(-1).mean().backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.set_memory(MemoryConfig(layer_chunk=7))
    m(ids).logsumexp(-1).mean().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)


class _LiveOutputs(TorchDispatchMode):
    """Weak references to the storage of every tensor an aten op creates, to sum
    the bytes that are still alive later (whatever keeps them: saved tensors,
    ctx attributes, views into larger buffers)."""

    def __init__(self):
        super().__init__()
        self.refs = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                ref = StorageWeakRef(st)
                old = self.refs.get(ref.cdata)
                if old is None or old[0].expired():
                    self.refs[ref.cdata] = (ref, st.nbytes())
        return out

    def alive_bytes(self, exclude=()) -> int:
        """Bytes of created storages still alive, not counting those in ``exclude``
        (e.g. views of parameters)."""
        skip = {StorageWeakRef(t.untyped_storage()).cdata for t in exclude}
        return sum(nb for key, (ref, nb) in self.refs.items() if key not in skip and not ref.expired())


@pytest.mark.parametrize("residual_dtype", [None, torch.bfloat16])
def test_chunked_training_keeps_only_block_inputs_for_backward(residual_dtype):
    """With layer_chunk, a training forward keeps, for backward, one whole-length
    residual per block (its input) plus the final norm's input, and otherwise only
    chunk-boundary states: no whole-length activation, no fp32 copy of a bf16
    residual, no view pinning a chunk-sized buffer (the old conv-context leak)."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=3, d_state=4)
    b, L, chunk = 2, 256, 32
    m = MambaDNA(cfg).train()
    m.set_memory(MemoryConfig(layer_chunk=chunk, residual_bf16=residual_dtype is not None))
    ids = torch.randint(7, 11, (b, L))
    packed = []

    def pack(t):
        st = t.untyped_storage()
        packed.append((tuple(t.shape), t.dtype, st.nbytes(), StorageWeakRef(st).cdata))
        return t

    live = _LiveOutputs()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), live, \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=residual_dtype is not None):
        logits = m(ids)
    gc.collect()

    esize = torch.tensor([], dtype=residual_dtype or torch.float32).element_size()
    resid = b * L * cfg.d_model * esize                      # one whole-length residual stream
    one_chunk = b * chunk * cfg.d_model * 4                  # one chunk of it, in fp32
    whole = {}
    for shape, dtype, nbytes, key in packed:
        if nbytes > one_chunk:
            assert shape == (b, L, cfg.d_model) and nbytes == resid, \
                f"saved for backward: {shape} {dtype} with a storage of {nbytes} B (more than one chunk)"
            whole[key] = shape
    assert len(whole) == cfg.n_layers + 1  # block inputs + final-norm input

    n_chunks, dirs = L // chunk, 2
    boundary = cfg.n_layers * dirs * (n_chunks - 1) * b * cfg.d_inner * (cfg.d_state + cfg.d_conv - 1) * 4
    budget = (cfg.n_layers + 1) * resid + logits.numel() * logits.element_size() + boundary
    kept = live.alive_bytes(exclude=[*m.parameters(), *m.buffers()])
    assert kept <= budget + 4096, f"forward keeps {kept} B alive, budget {budget} B"
    logits.float().logsumexp(-1).mean().backward()  # and the graph still runs
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("chunk", [0, 16])
def test_recomputed_output_not_kept_through_its_backward(chunk):
    """chunked_rows / checkpointed differentiate the recomputed block from its output's
    gradient edge: the block's output (e.g. the LM head's logits) is already freed when
    its backward runs; the gradients equal plain autograd's."""
    import weakref

    from mambadna.model.chunked import checkpointed, chunked_rows

    lin = torch.nn.Linear(8, 32)
    outs, alive = [], []

    def fn(x):
        h = torch.tanh(x)
        if h.requires_grad:  # (the recomputation in backward; the forward runs without grad)
            h.register_hook(lambda g: alive.append(any(o() is not None for o in outs)))
        y = lin(h)
        outs.append(weakref.ref(y))
        return y

    x = torch.randn(2, 64, 8, requires_grad=True)
    g = torch.randn(2, 64, 32)
    params = list(lin.parameters())
    y = chunked_rows(fn, x, chunk, params) if chunk else checkpointed(fn, x, params)
    outs.clear()  # (the forward's output is the caller's)
    gx, gw = torch.autograd.grad(y, [x, lin.weight], g)
    assert alive == [False] * (64 // chunk if chunk else 1)
    x2 = x.detach().requires_grad_(True)
    rx, rw = torch.autograd.grad(lin(torch.tanh(x2)), [x2, lin.weight], g)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
