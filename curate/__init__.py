"""curate: continued-pretraining data rich in reasoning behaviors."""

__version__ = "0.1.0"
