"""Sparse-gradient steps of ipex_train.optim's dense classes (SGD, Adagrad), with
torch.optim's semantics for sparse gradients. The classes call ``check_*`` for
every sparse grad before writing anything, then ``step_*`` per parameter."""
import torch

from . import functional as F


def _check_grad(who, p, g):
    if g.layout != torch.sparse_coo:
        raise TypeError(f"{who}: unsupported gradient layout {g.layout}")
    if tuple(g.shape) != tuple(p.shape):
        raise ValueError(f"{who}: grad of shape {tuple(g.shape)} for a param of shape {tuple(p.shape)}")
    if g.sparse_dim() != 1:
        raise ValueError(f"{who}: sparse grads need exactly one sparse dimension (rows), got "
                         f"sparse_dim={g.sparse_dim()}")
    if g.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"{who}: sparse grads must be float32 or bfloat16, got {g.dtype}")
    if not p.is_contiguous():
        raise ValueError(f"{who}: parameters must be contiguous")


def check_sgd(group, p, g):
    """torch.optim.SGD takes sparse grads only without momentum and weight decay."""
    _check_grad("SGD", p, g)
    if group["momentum"] != 0:
        raise RuntimeError("SGD: momentum is not supported with sparse gradients")
    if group["weight_decay"] != 0:
        raise RuntimeError("SGD: weight_decay is not supported with sparse gradients")


def step_sgd(group, p, g, trail):
    F.sparse_sgd_(p, g, float(group["lr"]), bool(group["maximize"]), trail)


def check_adagrad(group, p, g):
    _check_grad("Adagrad", p, g)
    if group["weight_decay"] != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")


def step_adagrad(group, p, g, state):
    """torch's sparse Adagrad: step += 1; clr = lr / (1 + (step - 1) * lr_decay);
    touched rows: sum += g^2, p -= clr * g / (sqrt(sum) + eps)."""
    step_t = state["step"]
    step_t += 1
    step = float(step_t)
    clr = group["lr"] / (1 + (step - 1) * group["lr_decay"])
    F.sparse_adagrad_(p, g, state["sum"], clr, group["eps"], bool(group.get("maximize", False)),
                      state.get("trail"))
