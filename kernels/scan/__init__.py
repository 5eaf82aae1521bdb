"""The selective scan (S6): fused Triton forward/backward, Gluon backward, PyTorch reference."""
