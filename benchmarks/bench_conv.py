"""Depthwise conv + SiLU along the length (Mamba's conv, d_conv 4), channel-last, bf16:
the fused Triton kernel against the PyTorch path it replaces (cat with the context,
cuDNN/ATen depthwise conv on the transposed view, SiLU, back to channel-last), forward
and forward+backward, median ms, ratio, and the fraction of the memory floor (forward:
read x, write y; forward+backward: that plus read x, dy, write dx).

    python benchmarks/bench_conv.py
"""
import os
import sys

import torch
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import copy_bandwidth  # noqa: E402

from mambadna.kernels import conv1d_silu  # noqa: E402

SHAPES = [(1, 131072, 512), (8, 131072, 512), (16, 4096, 1536), (1, 1048576, 512)]


def main():
    dev = torch.cuda.get_device_name()
    bw = copy_bandwidth()
    print(f"# {dev}; copy bandwidth {bw / 1e12:.2f} TB/s")
    print("| shape (b, L, D) | pass | ATen path ms | fused Triton ms | speed-up | Triton % of memory floor |")
    print("|---|---|---|---|---|---|")
    for b, L, D in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(b, L, D, device="cuda").bfloat16().requires_grad_()
        w = (torch.randn(D, 1, 4, device="cuda") * 0.3).requires_grad_()
        bias = torch.randn(D, device="cuda").requires_grad_()
        g = torch.randn(b, L, D, device="cuda").bfloat16()
        nbytes = x.numel() * 2
        for name, floor_bytes in (("fwd", 2 * nbytes), ("fwd+bwd", 5 * nbytes)):
            res = {}
            for be in ("reference", "triton"):
                if name == "fwd":
                    fn = lambda: conv1d_silu(x.detach(), w.detach(), bias.detach(), backend=be)  # noqa: E731
                else:
                    def fn():
                        y = conv1d_silu(x, w, bias, backend=be)
                        torch.autograd.grad(y, (x, w, bias), g)
                res[be] = do_bench(fn, rep=300, return_mode="median")
            floor = floor_bytes / bw * 1e3
            print(f"| ({b}, {L}, {D}) | {name} | {res['reference']:.3f} | {res['triton']:.3f} | "
                  f"{res['reference'] / res['triton']:.2f}x | {100 * floor / res['triton']:.0f}% |", flush=True)
        yr = conv1d_silu(x, w, bias, backend="reference")
        yt = conv1d_silu(x, w, bias, backend="triton")
        print(f"  max |y_triton - y_ref| / max |y_ref| = {((yt - yr).abs().max() / yr.abs().max()).item():.1e}")
        del x, w, bias, g, yr, yt
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
