"""The package version (a leaf: modules that record it import this, not the package, whose __init__ imports more)."""

__version__ = "0.1.0"
