"""Fused optimizers: drop-in replacements for torch.optim classes."""
from .sgd import SGD

__all__ = ["SGD"]
from .rowwise_adagrad import RowWiseAdagrad  # noqa: E402
from .sparse_adam import SparseAdam  # noqa: E402

__all__ += ["RowWiseAdagrad", "SparseAdam"]
