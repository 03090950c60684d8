"""graft's version (the one place it is written; ``graft.__version__`` and run files read it here)."""

__version__ = "0.1.0"
