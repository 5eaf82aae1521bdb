"""The benchmarks run.py knows: name -> runner script, what it puts side by side, and how
`run.py NAME --compare REV` joins two runs (the row key and the metrics, lower or higher better).

Every runner takes --device, --quick (tiny shapes, one repeat) and --json FILE, prints one header
line (device, versions, commit, date) and a markdown table with its baseline beside it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    script: str                 # in benchmarks/
    what: str                   # measured thing vs its baseline
    key: tuple                  # row fields that identify a row across runs
    metrics: tuple              # ((field, "lower" | "higher"), ...) compared by --compare
    mamba: bool = False         # its baseline needs mamba_ssm (gpu.sh waits for the build)


REGISTRY = {
    "scan": Bench("bench_scan.py", "selective scan (causal, reverse, fused bidirectional) vs mamba_ssm "
                  "selective_scan_fn (bidirectional: 2 calls + flips); PyTorch reference at small shapes",
                  ("shape", "mode"), (("ms", "lower"),), mamba=True),
    "conv": Bench("bench_conv.py", "fused depthwise conv + SiLU vs the PyTorch path it replaced",
                  ("shape", "mode"), (("ms", "lower"),)),
    "norm": Bench("bench_norm.py", "fused RMSNorm vs PyTorch ops", ("shape", "dtypes", "mode"), (("ms", "lower"),)),
    "pretrain": Bench("bench_pretrain.py", "16 x 256 bidirectional model step (fwd+bwd) vs the Caduceus-style "
                      "mamba_ssm build and a Transformer (SDPA); tokens/s and peak memory against length",
                      ("table", "model", "batch", "length", "note"), (("ms", "lower"), ("peak_gib", "lower")),
                      mamba=True),
    "caduceus": Bench("bench_caduceus.py", "a 16 x 256 Caduceus (Ph, PS) in Caduceus' own code with mamba_ssm's CUDA "
                      "kernels vs the same weights through mambadna.load: logits agreement, inference and "
                      "training-step ms", ("variant", "mode", "batch", "length"), (("mambadna_ms", "lower"),),
                      mamba=True),
    "embed": Bench("bench_embed.py", "embedding bases/s and peak memory: windows, and exact chunked mode "
                   "(checked equal to the whole pass) up to 10 Mb", ("mode", "length"),
                   (("bases_per_s", "higher"), ("peak_gib", "lower"))),
    "inference": Bench("bench_inference.py", "raw encoder forward vs embed and classify end to end",
                       ("model", "window", "precision", "what"), (("rate", "higher"),)),
    "ism": Bench("bench_ism.py", "saturation mutagenesis positions/s vs the raw forward bound (one masked "
                 "forward per position)", ("precision", "what"), (("rate", "higher"),)),
    "train_cpu": Bench("bench_train_cpu.py", "CPU training: the compiled training scan vs the PyTorch reference, "
                       "scan fwd+bwd and an 8 x 256 model step", ("shape", "what"), (("ms", "lower"),)),
    "tokenizer": Bench("bench_tokenizer.py", "tokenizer MB/s (one core) vs a numpy lookup table",
                       ("case",), (("mb_per_s", "higher"),)),
    "layer_memory": Bench("bench_layer_memory.py", "one step's peak memory by layer-memory mode vs plain autograd",
                          ("mode",), (("peak_gib", "lower"), ("seconds", "lower"))),
}

# what `benchmarks/gpu.sh` runs when given no names (the README's GPU tables)
GPU_DEFAULT = ("conv", "norm", "embed", "scan", "pretrain")
