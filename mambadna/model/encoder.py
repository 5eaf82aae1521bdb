"""Mamba encoders for DNA: causal, bidirectional (BiMamba) and RC-equivariant.

The selective scan is always called through :mod:`mambadna.kernels`; the model
never branches on the backend (Triton on CUDA, the PyTorch reference on CPU).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambadna.model.block import MambaBlock, RMSNorm
from mambadna.model.chunked import checkpointed, chunked_block, chunked_rows
from mambadna.model.config import MemoryConfig, ModelConfig
from mambadna.tokenizer import A as TOK_A, C as TOK_C, G as TOK_G, T as TOK_T

Tensor = torch.Tensor


# complement permutation over the vocabulary (A<->T, C<->G, others fixed)
def _complement_perm(vocab_size: int) -> Tensor:
    perm = torch.arange(vocab_size)
    perm[TOK_A], perm[TOK_T], perm[TOK_C], perm[TOK_G] = TOK_T, TOK_A, TOK_G, TOK_C
    return perm


def _rc_hidden(h: Tensor) -> Tensor:
    """Reverse-complement action on an RC-half of the residual stream."""
    return h.flip(1).flip(2)


class MambaDNA(nn.Module):
    """Token embedding, a stack of Mamba blocks, final RMSNorm, tied LM head.

    input_ids: (batch, length) int64 -> logits (batch, length, vocab_size).
    """

    def __init__(self, cfg: ModelConfig, memory: Optional[MemoryConfig] = None):
        super().__init__()
        self.config = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.mixer_width)
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layers))
        self.norm_f = RMSNorm(cfg.mixer_width, cfg.norm_eps)
        self.memory = MemoryConfig()
        self.register_buffer("complement", _complement_perm(cfg.vocab_size), persistent=False)
        self._init_weights()
        if memory is not None:
            self.set_memory(memory)

    def set_memory(self, memory: MemoryConfig) -> "MambaDNA":
        """Training-memory options (:class:`MemoryConfig`); returns self."""
        self.memory = memory
        return self

    def _init_weights(self) -> None:
        nn.init.normal_(self.embedding.weight, std=self.config.initializer_range)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.in_proj.weight, a=math.sqrt(5))
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():  # GPT-2 style rescale of residual outputs
                layer.mixer.out_proj.weight /= math.sqrt(self.config.n_layers)

    # -- RC-equivariant plumbing -----------------------------------------
    def _apply_shared(self, fn, h: Tensor) -> Tensor:
        """Apply ``fn`` to the forward half and, mirrored, to the RC half."""
        if not self.config.rc_equivariant:
            return fn(h)
        k = self.config.mixer_width
        a, b = h[..., :k], h[..., k:]
        s = fn(torch.cat([a, _rc_hidden(b)], dim=0))
        a2, b2 = s.chunk(2, dim=0)
        return torch.cat([a2, _rc_hidden(b2)], dim=-1)

    def embed_tokens(self, input_ids: Tensor) -> Tensor:
        """(batch, length) ids -> (batch, length, d_model) residual stream."""
        e = self.embedding(input_ids)
        if self.config.rc_equivariant:
            e_rc = self.embedding(self.complement[input_ids]).flip(-1)
            e = torch.cat([e, e_rc], dim=-1)
        return e

    def embed_onehot(self, x: Tensor) -> Tensor:
        """As :meth:`embed_tokens` for a (batch, length, vocab_size) float
        input written as one-hot @ embedding weights, so that gradients reach
        the bases (attributions); a one-hot of ids gives embed_tokens(ids)."""
        W = self.embedding.weight
        e = x.to(W.dtype) @ W
        if self.config.rc_equivariant:  # onehot(complement[ids]) == onehot(ids)[..., complement]
            e = torch.cat([e, (x[..., self.complement].to(W.dtype) @ W).flip(-1)], dim=-1)
        return e

    def run_layer(self, i: int, h: Tensor) -> Tensor:
        """Apply block ``i``: (batch, length, d_model) -> same."""
        return self._apply_shared(self.layers[i], h)

    def final_norm(self, h: Tensor) -> Tensor:
        return self._apply_shared(self.norm_f, h)

    def lm_logits(self, h: Tensor) -> Tensor:
        """Final-normed hidden (batch, L, d_model) -> logits (batch, L, vocab)."""
        W = self.embedding.weight
        if not self.config.rc_equivariant:
            return F.linear(h, W.to(h.dtype))
        k = self.config.mixer_width
        fwd = F.linear(h[..., :k], W.to(h.dtype))
        rc = F.linear(h[..., k:].flip(-1), W.to(h.dtype))
        return fwd + rc[..., self.complement]

    def hidden_states(self, input_ids: Tensor, layer: int = -1, final_norm: bool = True) -> Tensor:
        """Residual stream after block ``layer`` (negative counts from the end;
        ``layer=-1`` is the last block, followed by the final norm when
        ``final_norm``). input_ids (batch, L) -> (batch, L, d_model)."""
        n = self.config.n_layers
        stop = layer % n if n else 0
        h = self.embed_tokens(input_ids)
        if self.memory.residual_bf16:
            h = h.to(torch.bfloat16)
        for i in range(stop + 1):
            if self._layer_chunked():
                h = self._apply_shared(lambda x, i=i: chunked_block(self.layers[i], x, self.memory.layer_chunk), h)
            elif self.memory.checkpoint_layers and self.training and torch.is_grad_enabled():
                h = checkpointed(lambda x, i=i: self.run_layer(i, x), h,
                                 [p for p in self.layers[i].parameters() if p.requires_grad])
            else:
                h = self.run_layer(i, h)
        if final_norm and stop == n - 1:
            h = self.final_norm(h)
        return h

    def _layer_chunked(self) -> bool:
        return self.memory.layer_chunk > 0 and self.training and torch.is_grad_enabled()

    def forward(self, input_ids: Tensor) -> Tensor:
        """input_ids (batch, L) int64 -> logits (batch, L, vocab_size)."""
        if self._layer_chunked():
            # final norm + LM head in length chunks too: only their input is kept for
            # backward, not the norm's whole-length fp32 copies and the head's input
            h = self.hidden_states(input_ids, final_norm=False)
            params = [p for p in (self.norm_f.weight, self.embedding.weight) if p.requires_grad]
            return chunked_rows(lambda x: self.lm_logits(self.final_norm(x)), h, self.memory.layer_chunk, params)
        return self.lm_logits(self.hidden_states(input_ids))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
