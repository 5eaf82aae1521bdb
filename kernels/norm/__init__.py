"""RMSNorm: Triton kernel and PyTorch reference."""
