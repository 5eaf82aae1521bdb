"""User-facing jobs: each module holds its config and one entry function."""
