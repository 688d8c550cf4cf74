"""Fused optimizers: drop-in replacements for torch.optim classes."""
from .sgd import SGD

__all__ = ["SGD"]
