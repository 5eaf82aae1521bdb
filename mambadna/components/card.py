"""The README.md model card that :func:`mambadna.components.checkpoint.save_model`
writes beside the weights: what the model is, what it was trained on, for how
long, how well, and the command that made it (Hugging Face hub convention: YAML
front matter, then Markdown)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from mambadna.components.resume import flat_options


def _invocation() -> str:
    """The command line of this process (``mambadna ...`` for the console script or
    ``python -m mambadna.cli``, ``python -m pkg ...`` for another module)."""
    argv = list(sys.argv) or ["python"]
    path = Path(argv[0])
    prog = path.name
    if prog == "__main__.py":
        import mambadna.cli

        here = path.resolve().parent
        prog = "mambadna" if here == Path(mambadna.cli.__file__).resolve().parent else f"python -m {here.name}"
        return " ".join([prog, shlex.join(argv[1:])]).strip()
    return shlex.join([prog] + argv[1:])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _training_lines(extra: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    pre = extra.get("pretrain") if isinstance(extra.get("pretrain"), dict) else None
    fin = extra.get("finetune") if isinstance(extra.get("finetune"), dict) else None
    step = extra.get("step")
    if pre:
        pre = flat_options(pre)  # the sections' tables ([data], [optim], ...) merged in, the model's kept apart
        data = [f"genome `{pre['genome']}`" if pre.get("genome") else None,
                f"reads `{pre['bam']}`" + (f" ({pre['bam_region']})" if pre.get("bam_region") else "")
                if pre.get("bam") else None,
                f"regions `{pre['regions']}`" if pre.get("regions") else None]
        lines.append("- Training data: " + (", ".join(d for d in data if d) or "not recorded"))
        objective = (pre.get("model") or {}).get("bidirectional")
        if objective is not None:
            lines.append("- Objective: " + ("masked-LM (bidirectional)" if objective else "next-token (causal)"))
        if step is not None:
            lines.append(f"- Optimizer steps: {step:,}")
            try:
                tokens = int(step) * int(pre["batch_size"]) * int(pre["seq_len"])
                lines.append(f"- Tokens seen: {tokens:,} ({pre['batch_size']} windows × {pre['seq_len']} bases "
                             "per step)")
            except (KeyError, TypeError, ValueError):
                pass
        hp = [f"{k} {pre[k]}" for k in ("lr", "weight_decay", "mlm_probability", "seed") if k in pre]
        if hp:
            lines.append("- Hyper-parameters: " + ", ".join(hp))
    elif step is not None:
        lines.append(f"- Optimizer steps: {step:,}")
    if fin:
        src = fin.get("model")
        lines.append("- Fine-tuned" + (f" from `{src}`" if src else "")
                     + (f" on `{fin['train']}`" if fin.get("train") else ""))
    conv = extra.get("converted_from") if isinstance(extra.get("converted_from"), dict) else None
    if conv:
        lines.append(f"- Converted from a {conv.get('format', '?')} checkpoint: `{conv.get('source', '?')}`"
                     + (f" ({conv['variant']})" if conv.get("variant") else ""))
    return lines


def model_card(model, extra: Optional[Dict[str, Any]] = None) -> str:
    """Markdown model card for ``model`` (a MambaDNA) and the training info ``extra``
    (the keys :func:`save_model` stores in config.json: pretrain, step, val, ...)."""
    extra = dict(extra or {})
    c = model.config
    kind = "bidirectional (BiMamba, masked-LM)" if c.bidirectional else "causal (next-token)"
    if c.rc_equivariant:
        kind += ", reverse-complement equivariant (parameter sharing)"
    n_params = sum(p.numel() for p in model.parameters())
    tags = ["mambadna", "mamba", "dna", "genomics"]
    out = ["---", "library_name: mambadna", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    out += ["# mambadna model", "",
            f"A Mamba DNA encoder: {c.n_layers} layers × d_model {c.d_model}, {kind}; "
            f"{n_params:,} parameters; vocabulary of {c.vocab_size} character ids "
            "([CLS] [SEP] [BOS] [MASK] [PAD] [RESERVED] [UNK] A C G T N).", ""]
    train = _training_lines(extra)
    if train:
        out += ["## Training", ""] + train + [""]
    val = extra.get("val")
    metrics = extra.get("metrics")
    rows = [(k, v) for src in (val, metrics) if isinstance(src, dict) for k, v in src.items()]
    if rows:
        out += ["## Metrics", "", "| metric | value |", "| --- | --- |"]
        out += [f"| {k} | {_fmt(v)} |" for k, v in rows] + [""]
    command = extra.get("command") or _invocation()
    out += ["## How it was made", "", "```", command, "```", ""]
    out += ["## Use", "", "```python", "import mambadna", "",
            'model = mambadna.load("path/to/this/folder")  # or mambadna.Model.from_pretrained("owner/name")',
            'X = model.embed(["ACGT..."], pool="mean")', "```", "",
            "Configuration (config.json):", "", "```json",
            json.dumps(c.to_dict(), indent=1), "```", ""]
    return "\n".join(out)
