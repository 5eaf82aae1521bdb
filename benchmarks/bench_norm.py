"""RMSNorm over d_model: the fused Triton kernel against the PyTorch ops it replaces
(the memory-lean autograd Function of the reference), forward and forward+backward,
median ms, ratio and the fraction of the memory floor (forward: read x, write y;
forward+backward: that plus read x, dy, write dx).

    python benchmarks/bench_norm.py
"""
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import copy_bandwidth  # noqa: E402

from mambadna.kernels import rms_norm  # noqa: E402

# (rows as batch x length, d, input dtype, output dtype): the model's cases
SHAPES = [((1, 131072), 256, torch.bfloat16, torch.bfloat16), ((1, 131072), 256, torch.float32, torch.bfloat16),
          ((8, 131072), 256, torch.bfloat16, torch.bfloat16), ((1, 1048576), 256, torch.bfloat16, torch.bfloat16)]


def main():
    bw = copy_bandwidth()
    print(f"# {torch.cuda.get_device_name()}; copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| shape | in -> out | pass | PyTorch ops ms | fused Triton ms | speed-up | Triton % of memory floor |")
    print("|---|---|---|---|---|---|---|")
    for lead, d, dt, odt in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(*lead, d, device="cuda").to(dt).requires_grad_()
        w = (torch.rand(d, device="cuda") + 0.5).requires_grad_()
        g = torch.randn(*lead, d, device="cuda").to(odt)
        xb, ob = x.element_size(), g.element_size()
        n = x.numel()
        for name, floor_bytes in (("fwd", n * (xb + ob)), ("fwd+bwd", n * (3 * xb + 2 * ob))):
            res = {}
            for be in ("reference", "triton"):
                if name == "fwd":
                    fn = lambda: rms_norm(x.detach(), w.detach(), 1e-5, odt, backend=be)  # noqa: E731
                else:
                    def fn():
                        torch.autograd.grad(rms_norm(x, w, 1e-5, odt, backend=be), (x, w), g)
                res[be] = do_bench(fn, rep=300, return_mode="median")
            print(f"| {tuple(lead) + (d,)} | {str(dt)[6:]} -> {str(odt)[6:]} | {name} | {res['reference']:.3f} | "
                  f"{res['triton']:.3f} | {res['reference'] / res['triton']:.2f}x | "
                  f"{100 * floor_bytes / bw * 1e3 / res['triton']:.0f}% |", flush=True)
        yr = rms_norm(x, w, 1e-5, odt, backend="reference").float()
        yt = rms_norm(x, w, 1e-5, odt, backend="triton").float()
        print(f"  max |y_triton - y_ref| / max |y_ref| = {((yt - yr).abs().max() / yr.abs().max()).item():.1e}")
        del x, w, g
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
