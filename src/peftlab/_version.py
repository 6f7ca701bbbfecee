"""The package version (its own module, so that any peftlab module can read it while peftlab is importing)."""

__version__ = "0.1.0"
