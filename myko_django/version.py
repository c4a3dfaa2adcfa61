"""The package version, in the one place it is written (a leaf: imports nothing)."""

__version__ = "0.1.0"
