"""Depthwise conv + SiLU: Triton kernel and PyTorch reference."""
