"""Building blocks of recommendation models: ``ipex_train.nn.functional``."""
from . import functional

__all__ = ["functional"]
