"""The encoder: config, the Mamba block, length-chunked training, heads."""
from mambadna.model.config import ModelConfig
from mambadna.model.encoder import MambaDNA

__all__ = ["ModelConfig", "MambaDNA"]
