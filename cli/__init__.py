"""Command-line interface of mambadna (thin: parse, build a config, call the library)."""
