"""Per-parameter sparse updates: sparse-add and the sparse optimizer rules.

Every function works on one parameter ``weight`` [rows, ...] stored either in
fp32, or split (bf16 ``weight`` holding the top 16 bits of the fp32 master
value, int16 ``trail`` holding the low 16 bits; see ``ipex_train.optimize``).
With a trail the update is exact fp32 arithmetic on the joined master value,
bit for bit what the fp32 path computes.

A sparse ``grad`` is a COO tensor with one sparse dimension, exactly as
``nn.Embedding(sparse=True)`` / ``nn.EmbeddingBag(sparse=True)`` produce it:
indices [1, nnz] (rows, possibly repeated, any order), values [nnz, *rows shape].
It is used as is, never coalesced: the native code buckets the entries by row
so that each row is owned by one thread and sees its entries in their original
order. Results are therefore identical for any thread count.
"""
import math

import torch

from . import _ops


def _check_args(who, weight, **others):
    """Refuses what the native op would not see or would update silently wrong:
    tensors on another device than ``weight`` (a meta tensor among CPU ones
    would route the call to the do-nothing fake kernel), and an in-place update
    of a tensor autograd tracks (these ops have no derivative), as ``add_``."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{who}: weight must be a Tensor, got {type(weight).__name__}")
    for name, t in others.items():
        if isinstance(t, torch.Tensor) and t.device != weight.device:
            raise RuntimeError(f"{who}: {name} is on {t.device} but weight is on "
                               f"{weight.device}; all tensors must be on one device")
    if torch.is_grad_enabled() and weight.requires_grad:
        if weight.is_leaf:
            raise RuntimeError(f"{who}: a leaf Variable that requires grad is being used in an "
                               "in-place operation. Call it under torch.no_grad(), as "
                               "optimizers do.")
        raise RuntimeError(f"{who}: weight requires grad and {who} has no derivative; call it "
                           "under torch.no_grad() on a tensor autograd does not track")


def _sparse_parts(weight, grad, who):
    """(row indices [nnz], values [nnz, ...]) of a sparse COO grad for `weight`."""
    if not isinstance(grad, torch.Tensor) or grad.layout != torch.sparse_coo:
        raise TypeError(f"{who}: grad must be a sparse COO tensor, got "
                        f"{getattr(grad, 'layout', type(grad))}")
    if tuple(grad.shape) != tuple(weight.shape):
        raise ValueError(f"{who}: grad has shape {tuple(grad.shape)} but weight has shape "
                         f"{tuple(weight.shape)}")
    if grad.sparse_dim() != 1:
        raise ValueError(f"{who}: grad must have exactly one sparse dimension (rows), got "
                         f"sparse_dim={grad.sparse_dim()}; use grad.to_sparse(1)")
    idx = grad._indices()[0]
    vals = grad._values()
    return idx.contiguous(), vals.contiguous()


def sparse_add_(weight, grad, alpha=1.0, trail=None):
    """In place ``weight += alpha * grad`` for a sparse COO ``grad``, without coalescing.

    Duplicate rows are all applied (their sum), in their original order per row.
    ``trail``: the int16 low halves of a split-bf16 ``weight``. Returns ``weight``.
    """
    _check_args("sparse_add_", weight, grad=grad, trail=trail)
    idx, vals = _sparse_parts(weight, grad, "sparse_add_")
    torch.ops.ipex_train.sparse_add_(weight, trail, idx, vals, float(alpha))
    return weight


def sparse_sgd_(param, grad, lr, maximize=False, trail=None):
    """torch.optim.SGD's step for a sparse grad (no momentum, no weight decay, as torch):
    ``param -= lr * grad`` (``+=`` with maximize)."""
    return sparse_add_(param, grad, lr if maximize else -lr, trail)


def _row_update(kind, param, grad, trail, state1, state2, lr, eps, beta1=0.0, beta2=0.0,
                step_size=0.0, maximize=False, who="", allow_dense=False):
    states = {"exp_avg": state1, "exp_avg_sq": state2} if kind == _ops.ADAM else \
        {"state_sum": state1}
    _check_args(who, param, grad=grad, trail=trail, **states)
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"{who}: grad must be a Tensor, got {type(grad).__name__}")
    if grad.layout == torch.sparse_coo:
        idx, vals = _sparse_parts(param, grad, who)
    elif allow_dense:
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(f"{who}: grad has shape {tuple(grad.shape)} but param has shape "
                             f"{tuple(param.shape)}")
        idx, vals = None, grad.contiguous()
    else:
        raise TypeError(f"{who}: expects a sparse COO grad, got layout {grad.layout}")
    torch.ops.ipex_train.sparse_row_update_(param, trail, state1, state2, idx, vals, kind,
                                            float(lr), float(eps), float(beta1), float(beta2),
                                            float(step_size), bool(maximize))
    return param


def sparse_adagrad_(param, grad, state_sum, lr, eps=1e-10, maximize=False, trail=None):
    """torch.optim.Adagrad's sparse step: rows touched by ``grad`` (duplicates summed
    first) get ``sum += g*g; param -= lr * g / (sqrt(sum) + eps)``; other rows are
    untouched. ``lr`` is the already decayed rate (torch's ``clr``); ``state_sum``
    is fp32 of param's shape."""
    return _row_update(_ops.ADAGRAD, param, grad, trail, state_sum, None, lr, eps,
                       maximize=maximize, who="sparse_adagrad_")


def rowwise_adagrad_(param, grad, state_sum, lr, eps=1e-8, maximize=False, trail=None):
    """Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD), for a sparse or dense grad:
    for each row r with gradient g (duplicates summed first),
    ``sum[r] += mean(g**2); param[r] -= lr / (sqrt(sum[r]) + eps) * g``.
    ``state_sum``: fp32 [rows]. A dense grad updates every row."""
    return _row_update(_ops.ROWWISE_ADAGRAD, param, grad, trail, state_sum, None, lr, eps,
                       maximize=maximize, who="rowwise_adagrad_", allow_dense=True)


def sparse_adam_(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-8, maximize=False, trail=None):
    """torch.optim.SparseAdam's step ("lazy Adam"): only rows present in ``grad``
    (duplicates summed first) update their moments and weights. ``step`` is the
    parameter's step count after this step (1 on the first)."""
    bc1 = 1.0 - beta1 ** step
    bc2 = 1.0 - beta2 ** step
    step_size = lr * math.sqrt(bc2) / bc1
    return _row_update(_ops.ADAM, param, grad, trail, exp_avg, exp_avg_sq, lr, eps, beta1, beta2,
                       step_size, maximize, who="sparse_adam_")
