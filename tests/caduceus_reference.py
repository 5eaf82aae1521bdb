#!/usr/bin/env python3
"""Runs Caduceus' own code (../shared/baselines/caduceus) on CPU for tests/test_caduceus.py.

Not a test module: the suite runs it in a subprocess, once per session, because it needs
transformers, einops and the unpacked mamba_ssm sources, and patches their modules.

    python caduceus_reference.py --mamba-src DIR --jobs jobs.json

jobs.json is a list of:
  {"make": OUT, "args": [...]}          reference_outputs.py with these arguments (writes OUT/checkpoint,
                                        OUT/outputs.safetensors), run in this process
  {"run": CKPT, "ids": F, "out": F2,    CaduceusForMaskedLM.from_pretrained(CKPT) on the ids of F
   "fused": true|false|null,            (fused_add_norm overridden unless null; pytorch_model.bin when
   "use_safetensors": true|false}       use_safetensors is false); writes F2 with logits,
                                        last_hidden (backbone output) and hidden_inputs (the last entry
                                        of output_hidden_states), and the loading info as F2.json
  {"dedup": CKPT, "out": DIR}           DIR/config.json + model.safetensors with tied tensors stored once
                                        (safetensors.torch.save_model, as the hub's conversion does)

fused_add_norm needs mamba_ssm's Triton kernels; here they are routed to mamba_ssm's own
references (rms_norm_ref / layer_norm_ref) as reference_outputs.py does for RMSNorm.
"""
import argparse
import json
import runpy
import sys
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASELINES = Path(__import__("os").environ.get("MAMBADNA_BASELINES", HERE.parents[1] / "shared" / "baselines"))
REFERENCE = BASELINES / "caduceus" / "reference_outputs.py"


def _patch(mamba_src: str) -> None:
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    sys.path[:0] = [mamba_src, str(BASELINES)]
    import torch
    import mamba_ssm.modules.block as blk
    import mamba_ssm.modules.mamba_simple as ms
    import mamba_ssm.ops.selective_scan_interface as ssi
    import mamba_ssm.ops.triton.layer_norm as ln

    ms.causal_conv1d_fn = None
    ms.causal_conv1d_update = None
    ms.selective_scan_fn = ssi.selective_scan_ref
    ln.RMSNorm.forward = lambda self, x, residual=None, prenorm=False, residual_in_fp32=False: ln.rms_norm_ref(
        x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm, upcast=True)

    def fused(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6,
              is_rms_norm=False, **_):
        ref = ln.rms_norm_ref if is_rms_norm else ln.layer_norm_ref
        res_dtype = torch.float32 if residual_in_fp32 else (residual.dtype if residual is not None else x.dtype)
        out = ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
        if not prenorm:
            return out.to(x.dtype)
        y, r = out
        return y.to(x.dtype), r.to(res_dtype)

    def rms_fused(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6, **kw):
        return fused(x, weight, bias, residual, prenorm, residual_in_fp32, eps, is_rms_norm=True)

    ln.layer_norm_fn, ln.rms_norm_fn, blk.layer_norm_fn = fused, rms_fused, fused


def _run(job) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from caduceus.configuration_caduceus import CaduceusConfig
    from caduceus.modeling_caduceus import CaduceusForMaskedLM

    cfg = CaduceusConfig.from_pretrained(job["run"])
    if job.get("fused") is not None:
        cfg.fused_add_norm = bool(job["fused"])
    model, info = CaduceusForMaskedLM.from_pretrained(  # use_safetensors False: pytorch_model.bin
        job["run"], config=cfg, output_loading_info=True, use_safetensors=None if job.get("use_safetensors", True)
        else False)
    model.eval()
    ids = load_file(job["ids"])["input_ids"]
    with torch.no_grad():
        o = model(input_ids=ids, output_hidden_states=True)
        last = model.caduceus(input_ids=ids).last_hidden_state
    save_file({"logits": o.logits.contiguous(), "last_hidden": last.contiguous(),
               "hidden_inputs": o.hidden_states[-1].contiguous()}, job["out"])
    Path(job["out"] + ".json").write_text(json.dumps(
        {k: sorted(map(str, v)) for k, v in info.items()} | {"vocab_size": model.config.vocab_size}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mamba-src", required=True)
    ap.add_argument("--jobs", required=True)
    a = ap.parse_args()
    _patch(a.mamba_src)
    for job in json.loads(Path(a.jobs).read_text()):
        if "make" in job:
            argv = sys.argv
            sys.argv = [str(REFERENCE), "--mamba-src", a.mamba_src, "--out", job["make"], *map(str, job["args"])]
            try:
                runpy.run_path(str(REFERENCE), run_name="__main__")
            finally:
                sys.argv = argv
        elif "run" in job:
            _run(job)
        elif "dedup" in job:  # transformers 4.46 refuses safetensors for untied-by-config shared tensors,
            # so do what the hub's safetensors conversion does: safetensors' own de-duplication
            from safetensors.torch import save_model
            from caduceus.modeling_caduceus import CaduceusForMaskedLM

            model = CaduceusForMaskedLM.from_pretrained(job["dedup"])
            model.config.save_pretrained(job["out"])
            save_model(model, str(Path(job["out"]) / "model.safetensors"), metadata={"format": "pt"})


if __name__ == "__main__":
    main()
