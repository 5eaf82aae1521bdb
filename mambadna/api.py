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

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from mambadna.components.checkpoint import load_model, read_config
from mambadna.model.config import ModelConfig
from mambadna.inference.engine import Embedder, Stream, stack_results
from mambadna.components.device import resolve_device
from mambadna.errors import InputError
from mambadna.model.encoder import MambaDNA
from mambadna.io.files import PathLike
from mambadna.io.records import index_frame, is_single, iter_records
from mambadna.tokenizer import MASK



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
        if is_single(inputs) and len(recs) == 1:
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
        return out[0] if is_single(inputs) else out

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

    # -- hub-style folders -------------------------------------------------
    def save_pretrained(self, directory: PathLike, push_to_hub: Optional[str] = None, **hub_kw) -> Path:
        """Write this model as a hub-style folder (config.json, model.safetensors,
        README.md model card; training info kept); with ``push_to_hub="owner/name"``
        also upload it (needs huggingface_hub; ``hub_kw``: token, private, ...)."""
        from mambadna.components.hub import push_to_hub as _push, save_pretrained, saved_extra

        out = save_pretrained(self.torch_model, directory, saved_extra(self.checkpoint_config))
        if push_to_hub:
            _push(out, push_to_hub, **hub_kw)
        return out

    @classmethod
    def from_pretrained(cls, path_or_repo_id: PathLike, device: Union[str, torch.device, None] = "auto",
                        **hub_kw) -> "Model":
        """:func:`load` a model folder (mambadna's or Caduceus') or a Hugging Face hub
        repo id ("owner/name", downloaded through huggingface_hub; ``hub_kw``:
        revision, cache_dir, token, local_files_only)."""
        from mambadna.components.hub import resolve_pretrained

        return load(resolve_pretrained(path_or_repo_id, **hub_kw), device)


def load(path: PathLike, device: Union[str, torch.device, None] = "auto") -> Model:
    """Load a model directory (config.json + model.safetensors) for inference; a
    Caduceus folder (config.json with ``model_type: "caduceus"``) is converted in memory.

    device: "auto" (cuda when available), "cpu", "cuda" or "cuda:N".
    """
    dev = resolve_device(device)
    path = Path(path)
    cfg = read_config(path)
    model = load_model(path, dev)
    return Model(model, dev, path, cfg)
