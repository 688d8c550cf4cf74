"""Fused optimizers: drop-in replacements for torch.optim classes."""
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .lamb import Lamb
from .sgd import SGD

__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "Lamb"]
from .rowwise_adagrad import RowWiseAdagrad  # noqa: E402
from .sparse_adam import SparseAdam  # noqa: E402

__all__ += ["RowWiseAdagrad", "SparseAdam"]
