"""Row-wise Adagrad: one accumulator per row, as FBGEMM's EXACT_ROWWISE_ADAGRAD."""
import torch

from ._base import check_hyper, float_of
from ._row_update import RowUpdateOptimizer


class RowWiseAdagrad(RowUpdateOptimizer):
    """Adagrad with one fp32 accumulator per row of each parameter.

    For a parameter ``w`` [rows, ...] and the gradient ``g`` of one row::

        sum[row] += mean(g ** 2)
        w[row]   -= lr / (sqrt(sum[row]) + eps) * g

    This is FBGEMM's EXACT_ROWWISE_ADAGRAD (``eps`` defaults to FBGEMM's 1e-8).
    The state is ``rows`` floats instead of Adagrad's full copy of the table,
    which is why it is the usual choice for large embeddings.

    Gradients may be dense (every row is updated) or sparse COO as
    ``nn.Embedding(sparse=True)`` produces them (only the rows present are
    updated; duplicate rows are summed first, the same bits for any thread
    count). Parameters are fp32, or split bf16 (a bfloat16 param with an int16
    ``"trail"`` in its state, as ``ipex_train.optimize`` makes them).
    State per param: ``"sum"`` (fp32 [rows]), created at its first update.
    Every param of every group is checked before any is updated.
    """

    _row_rule = "rowwise_adagrad"
    _row_state = ("sum",)
    _allow_dense = True

    def __init__(self, params, lr=1e-2, eps=1e-8, initial_accumulator_value=0.0, *,
                 maximize=False):
        check_hyper(type(self).__name__, lr=lr, eps=eps, weight_decay=0.0, differentiable=False)
        if not 0.0 <= initial_accumulator_value:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        super().__init__(params, dict(lr=lr, eps=eps, maximize=maximize,
                                      initial_accumulator_value=initial_accumulator_value))

    def _state_shape(self, p, key):
        return p.shape[:1] if key == "sum" else super()._state_shape(p, key)

    def _row_args(self, group, p, state):
        acc = state.get("sum")
        if acc is None:
            acc = self._new_state(p, state, "sum", torch.full(
                (p.shape[0],), float(group["initial_accumulator_value"]), dtype=torch.float32))
        return (acc, None, float_of(group["lr"]), float(group["eps"]), 0.0, 0.0, 0.0,
                bool(group["maximize"]))
