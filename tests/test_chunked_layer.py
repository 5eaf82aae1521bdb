"""Exact length-chunked training of a block: output and every gradient equal the whole-length block."""
import pytest
import torch

from mambadna.chunked import chunked_block
from mambadna.config import ModelConfig
from mambadna.model import MambaDNA


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
    m.layer_chunk = 7
    m(ids).logsumexp(-1).mean().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4, msg=n)
