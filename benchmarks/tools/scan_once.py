"""One warm-up and one timed forward+backward of the Triton scan at one shape, for
`ncu` (per-kernel counters): python benchmarks/scan_once.py B D N L [json-config]."""
import json
import sys

import torch

from mambadna.kernels import triton_scan as ts
from mambadna.kernels import selective_scan

b, D, N, L = (int(v) for v in sys.argv[1:5])
if len(sys.argv) > 5:
    ts.CONFIG.update(json.loads(sys.argv[5]))
dt = torch.bfloat16
g = torch.Generator(device="cuda").manual_seed(0)
u = torch.randn(b, L, D, device="cuda", generator=g).to(dt).requires_grad_()
delta = (torch.randn(b, L, D, device="cuda", generator=g) * 0.5 - 1).to(dt).requires_grad_()
z = torch.randn(b, L, D, device="cuda", generator=g).to(dt).requires_grad_()
B = torch.randn(b, L, 1, N, device="cuda", generator=g).to(dt).requires_grad_()
C = torch.randn(b, L, 1, N, device="cuda", generator=g).to(dt).requires_grad_()
A = (-torch.rand(D, N, device="cuda", generator=g) * 4 - 0.5).requires_grad_()
Dv = torch.randn(D, device="cuda", generator=g).requires_grad_()
bias = (torch.randn(D, device="cuda", generator=g) * 0.1).requires_grad_()
go = torch.randn(b, L, D, device="cuda", generator=g).to(dt)
for _ in range(2):
    y = selective_scan(u, delta, A, B, C, Dv, z, bias, True, backend="triton")
    y.backward(go)
torch.cuda.synchronize()
print("ok", float(y.float().abs().mean()))
