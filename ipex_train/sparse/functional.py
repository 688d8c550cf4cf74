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


def row_update_(rule, params, grads, trails, state1, state2, lr, eps, beta1, beta2, step_size,
                maximize):
    """One native call applying `rule` ("sgd", "adagrad", "rowwise_adagrad",
    "adam") to every param, each with its own entry in every list. The first
    len(trails) params are split bf16 (their trails), the rest fp32; state1 /
    state2 are empty where the rule has no such state. Checks everything, row
    ids included, before the first write; bumps the autograd version of every
    written tensor."""
    torch.ops.ipex_train.sparse_row_update_(params, grads, trails, state1, state2, rule, lr, eps,
                                            beta1, beta2, step_size, maximize)


def _one(rule, param, grad, trail, state1, state2, lr, eps=0.0, beta1=0.0, beta2=0.0,
         step_size=0.0, maximize=False, who="", allow_dense=False):
    states = {"exp_avg": state1, "exp_avg_sq": state2} if rule == "adam" else \
        {"state_sum": state1}
    _check_args(who, param, grad=grad, trail=trail, **states)
    if not isinstance(grad, torch.Tensor):
        raise TypeError(f"{who}: grad must be a Tensor, got {type(grad).__name__}")
    if not allow_dense and getattr(grad, "layout", None) is not torch.sparse_coo:
        raise TypeError(f"{who}: grad must be a sparse COO tensor, got "
                        f"{getattr(grad, 'layout', type(grad).__name__)}")
    row_update_(rule, [param], [grad], [] if trail is None else [trail],
                [] if state1 is None else [state1], [] if state2 is None else [state2],
                [float(lr)], [float(eps)],
                [float(beta1)], [float(beta2)], [float(step_size)], [bool(maximize)])
    return param


def sparse_add_(weight, grad, alpha=1.0, trail=None):
    """In place ``weight += alpha * grad`` for a sparse COO ``grad``, without coalescing.

    Duplicate rows are all applied (their sum), in their original order per row.
    ``trail``: the int16 low halves of a split-bf16 ``weight``. Returns ``weight``.
    """
    return _one("sgd", weight, grad, trail, None, None, -float(alpha), who="sparse_add_")


def sparse_sgd_(param, grad, lr, maximize=False, trail=None):
    """torch.optim.SGD's step for a sparse grad (no momentum, no weight decay, as torch):
    ``param -= lr * grad`` (``+=`` with maximize)."""
    return _one("sgd", param, grad, trail, None, None, lr, maximize=maximize, who="sparse_sgd_")


def sparse_adagrad_(param, grad, state_sum, lr, eps=1e-10, maximize=False, trail=None):
    """torch.optim.Adagrad's sparse step: rows touched by ``grad`` (duplicates summed
    first) get ``sum += g*g; param -= lr * g / (sqrt(sum) + eps)``; other rows are
    untouched. ``lr`` is the already decayed rate (torch's ``clr``); ``state_sum``
    is fp32 of param's shape."""
    return _one("adagrad", param, grad, trail, state_sum, None, lr, eps, maximize=maximize,
                who="sparse_adagrad_")


def rowwise_adagrad_(param, grad, state_sum, lr, eps=1e-8, maximize=False, trail=None):
    """Row-wise Adagrad (FBGEMM's EXACT_ROWWISE_ADAGRAD), for a sparse or dense grad:
    for each row r with gradient g (duplicates summed first),
    ``sum[r] += mean(g**2); param[r] -= lr / (sqrt(sum[r]) + eps) * g``.
    ``state_sum``: fp32 [rows]. A dense grad updates every row."""
    return _one("rowwise_adagrad", param, grad, trail, state_sum, None, lr, eps,
                maximize=maximize, who="rowwise_adagrad_", allow_dense=True)


def adam_step_size(lr, beta1, beta2, step):
    """SparseAdam's step size at step count `step` (1 on the first step)."""
    return lr * math.sqrt(1.0 - beta2 ** step) / (1.0 - beta1 ** step)


def sparse_adam_(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-8, maximize=False, trail=None):
    """torch.optim.SparseAdam's step ("lazy Adam"): only rows present in ``grad``
    (duplicates summed first) update their moments and weights. ``step`` is the
    parameter's step count after this step (1 on the first)."""
    return _one("adam", param, grad, trail, exp_avg, exp_avg_sq, lr, eps, beta1, beta2,
                adam_step_size(lr, beta1, beta2, step), maximize, who="sparse_adam_")
