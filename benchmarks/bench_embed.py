"""Embedding throughput and memory (issue 6).

GPU (default): the 16 x 256 bidirectional model (random weights: speed does
not depend on them) embeds windows of 1 kb, 131 kb and 1 Mb (each window in
one piece), then single sequences of 1, 4 and 10 Mb in chunked exact mode,
where peak GPU memory stays flat as the sequence grows (host memory holds one
layer, L x d_model fp32). Also checks chunked == whole on one sequence.

    python benchmarks/run.py embed                        # GPU, full table
    python benchmarks/bench_embed.py --precision bf16     # autocast
    python benchmarks/bench_embed.py --smoke              # = --device cpu --quick (tests/test_embed.py)

Prints a table (and --json FILE writes the rows). Does not import pysam. The baseline is the
whole-sequence pass itself: chunked rows are exact (checked) and compared by bases/s and peak memory.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def _ints(s: str):
    return [int(float(x)) for x in s.split(",") if x]


def parse(argv=None):
    p = common.parser(__doc__)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=16)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--causal", action="store_true", help="causal model instead of bidirectional")
    p.add_argument("--windows", type=_ints, default=[1000, 131072, 1_000_000])
    p.add_argument("--bases", type=float, default=4e6, help="bases embedded per window row (>= one batch)")
    p.add_argument("--batch-tokens", type=float, default=2 ** 20, help="batch x window per batch")
    p.add_argument("--chunked", type=_ints, default=[1_000_000, 4_000_000, 10_000_000])
    p.add_argument("--chunk-size", type=int, default=131072)
    p.add_argument("--check-length", type=int, default=131072, help="length of the chunked == whole check")
    p.add_argument("--check-chunk", type=int, default=10000)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--smoke", action="store_true", help="alias of --device cpu --quick")
    a = p.parse_args(argv)
    if a.smoke or a.quick:
        a.device, a.d_model, a.n_layers, a.d_state = "cpu", 32, 2, 8
        a.windows, a.bases, a.batch_tokens = [64, 256], 1024, 1024
        a.chunked, a.chunk_size = [512, 1024, 2048], 256
        a.check_length, a.check_chunk = 200, 64
        torch.set_num_threads(1)  # tiny ops: one thread is faster (and robust on a busy box)
    return a


_sync, _reset_peak, _peak_gib = common.sync, common.reset_peak, common.peak_gib


def _seqs(rng, n, L):
    return [rng.integers(7, 11, size=L, dtype=np.uint8) for _ in range(n)]


def run_row(model, dev, args, mode, L, batch, n_seqs, chunk, rng):
    emb = model.embedder(pool="mean", batch_size=batch, max_tokens=max(batch * L, 1), chunk_size=chunk,
                         precision=args.precision, progress=False)
    warm = min(L, 2 * chunk) if mode == "chunked" else L
    emb_w = model.embedder(pool="mean", batch_size=batch, max_tokens=max(batch * warm, 1), chunk_size=chunk,
                           precision=args.precision, progress=False)
    emb_w.embed(_seqs(rng, min(batch, n_seqs), warm))  # compile / autotune, untimed
    seqs = _seqs(rng, n_seqs, L)
    _reset_peak(dev)
    _sync(dev)
    t0 = time.perf_counter()
    try:
        out = emb.embed(seqs)
        _sync(dev)
    except torch.cuda.OutOfMemoryError:
        return dict(mode=mode, length=L, batch=batch, seqs=n_seqs, bases=n_seqs * L, seconds=float("nan"),
                    bases_per_s=float("nan"), peak_gib=float("nan"), host_mib=0.0, note="OOM")
    dt = time.perf_counter() - t0
    assert np.isfinite(np.stack(out)).all()
    cfg = model.config
    host = batch * L * cfg.d_model * 4 / 2 ** 20 if (mode == "chunked" and cfg.bidirectional) else 0.0
    return dict(mode=mode, length=L, batch=batch, seqs=n_seqs, bases=n_seqs * L, seconds=dt,
                bases_per_s=n_seqs * L / dt, peak_gib=_peak_gib(dev), host_mib=host, note="")


def check_exact(model, dev, args, rng) -> float:
    """max |chunked - whole| per token on one sequence (fp32)."""
    ids = _seqs(rng, 1, args.check_length)
    whole = model.embedder(pool=None, chunk_size=args.check_length, progress=False).embed(ids)[0]
    chunked = model.embedder(pool=None, chunk_size=args.check_chunk, progress=False).embed(ids)[0]
    return float(np.abs(whole - chunked).max())


def main(argv=None):
    args = parse(argv)
    import mambadna

    dev = common.device(args.device)
    torch.manual_seed(0)
    net = common.build_model(args.d_model, args.n_layers, d_state=args.d_state, bidirectional=not args.causal)
    model = mambadna.Model(net.to(dev), dev)  # in-memory model, as mambadna.load(dir) returns
    cfg = model.config
    rng = np.random.default_rng(0)
    name = "GPU" if dev.type == "cuda" else "CPU"
    print(common.header(dev))
    print(f"# {cfg.n_layers} x {cfg.d_model} {'causal' if args.causal else 'bidirectional'} model, "
          f"{net.num_parameters():,} parameters, {args.precision}")
    rows = []
    for L in args.windows:
        batch = max(1, int(args.batch_tokens) // L)
        n = max(batch, int(args.bases) // L)
        n = -(-n // batch) * batch
        rows.append(run_row(model, dev, args, "window", L, batch, n, chunk=L, rng=rng))
        print(_fmt(rows[-1], name), flush=True)
    for L in args.chunked:
        rows.append(run_row(model, dev, args, "chunked", L, 1, 1, chunk=args.chunk_size, rng=rng))
        print(_fmt(rows[-1], name), flush=True)
    diff = check_exact(model, dev, args, rng)
    print()
    print(table(rows, name, args))
    print(f"\nmax |chunked - whole| = {diff:.2e} (per token, fp32, length {args.check_length}, "
          f"chunk {args.check_chunk})")
    common.write_json(args.json, rows, dev, benchmark="embed", precision=args.precision, max_abs_diff=diff,
                      chunk_size=args.chunk_size)
    return rows


def _fmt(r, name):
    return (f"{r['mode']:8s} L={r['length']:>10,d} batch={r['batch']:>5d} {r['bases_per_s']:>14,.0f} bases/s "
            f"peak {name} {r['peak_gib']:.2f} GiB {r['note']}")


def table(rows, name, args):
    mem = "peak GPU mem (GiB)" if name == "GPU" else "peak RSS (GiB)"
    out = [f"| mode | length (bp) | batch | chunk | bases/s | {mem} | host buffer (MiB) |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        chunk = "-" if r["mode"] == "window" else f"{args.chunk_size:,}"
        note = f" ({r['note']})" if r["note"] else ""
        out.append(f"| {r['mode']}{note} | {r['length']:,} | {r['batch']} | {chunk} | {r['bases_per_s']:,.0f} | "
                   f"{r['peak_gib']:.2f} | {r['host_mib']:,.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
