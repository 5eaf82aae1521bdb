"""mambadna: genomic sequence modeling with Mamba encoders."""
__version__ = "0.1.0"
