"""Row-wise Adagrad: one accumulator per row, as FBGEMM's EXACT_ROWWISE_ADAGRAD."""
import torch

from ..sparse import functional as F

TRAIL = "trail"


class RowWiseAdagrad(torch.optim.Optimizer):
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
    State per param: ``"sum"`` (fp32 [rows]).
    """

    def __init__(self, params, lr=1e-2, eps=1e-8, initial_accumulator_value=0.0, *,
                 maximize=False):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if eps < 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if initial_accumulator_value < 0.0:
            raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
        super().__init__(params, dict(lr=lr, eps=eps, maximize=maximize,
                                      initial_accumulator_value=initial_accumulator_value))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() < 1:
                    raise ValueError("RowWiseAdagrad: parameters need at least one dimension (rows)")
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.full((p.shape[0],), float(group["initial_accumulator_value"]),
                                              dtype=torch.float32)
                F.rowwise_adagrad_(p, p.grad, state["sum"], group["lr"], group["eps"],
                                   group["maximize"], state.get(TRAIL))
        return loss
