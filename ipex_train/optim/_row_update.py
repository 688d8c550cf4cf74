"""The base of optimizers that update every parameter row by row."""
import torch

from ._base import FusedOptimizer, where


class RowUpdateOptimizer(FusedOptimizer):
    """Base of RowWiseAdagrad and SparseAdam: every param with a gradient goes
    to the native row-update op (all groups in one call, everything checked
    before the first write).

    Subclasses set ``_row_rule``, ``_row_state`` and ``_allow_dense`` (dense
    grads accepted besides sparse COO) and implement ``_row_args`` and, where
    needed, ``_row_done`` (see FusedOptimizer).
    """

    _rows_only = True
    _allow_dense = False

    def _check_row_policy(self, group, p, grad):
        if not self._allow_dense and grad.layout is not torch.sparse_coo:
            raise RuntimeError(f"{type(self).__name__} does not support dense gradients, please "
                               f"consider Adam instead (got one for {where(self, group, p)})")
