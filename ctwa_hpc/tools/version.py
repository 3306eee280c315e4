"""The package version (one place: ``ctwa_hpc.__version__`` and the output's attributes)."""

__version__ = "0.1.0"
