"""mambadna: genomic sequence modeling with Mamba encoders."""
__version__ = "0.1.0"

# Lazy exports: `import mambadna` stays light (no torch / pysam until used).
_LAZY = {
    "load": ("mambadna.api", "load"),
    "Model": ("mambadna.api", "Model"),
    "Genome": ("mambadna.io.fasta", "Genome"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        value = getattr(importlib.import_module(mod), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mambadna' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
