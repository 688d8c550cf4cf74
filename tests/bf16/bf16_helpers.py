"""Shared pieces of the split-bf16 tests: optimizer configurations and models."""
import pytest
import torch
from torch import nn

import ipex_train

# Per optimizer: (torch.optim class or None, list of hyperparameter sets).
# Optimizers without a torch peer (Lamb) are built from ipex_train.optim.
OPTIMIZERS = {
    "SGD": (torch.optim.SGD, [
        dict(lr=0.05),
        dict(lr=0.05, momentum=0.9, weight_decay=1e-3),
        dict(lr=0.02, momentum=0.9, nesterov=True, maximize=True),
        dict(lr=0.02, momentum=0.5, dampening=0.1),
    ]),
    "Adam": (torch.optim.Adam, [
        dict(lr=1e-2),
        dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2, amsgrad=True),
    ]),
    "AdamW": (torch.optim.AdamW, [
        dict(lr=1e-2, weight_decay=0.05),
        dict(lr=1e-2, amsgrad=True, maximize=True),
    ]),
    "Adagrad": (torch.optim.Adagrad, [
        dict(lr=0.05),
        dict(lr=0.05, lr_decay=1e-3, weight_decay=1e-3, initial_accumulator_value=0.1),
    ]),
    "Lamb": (None, [
        dict(lr=1e-2),
        dict(lr=1e-2, weight_decay=1e-2),
    ]),
}


def optimizer_cases():
    """pytest params (name, cfg) over every optimizer (each is in ipex_train.optim:
    a missing one fails its tests)."""
    return [pytest.param(name, cfg, id=f"{name}-{i}")
            for name, (_, cfgs) in OPTIMIZERS.items() for i, cfg in enumerate(cfgs)]


def make_optimizer(name, params, cfg):
    torch_cls = OPTIMIZERS[name][0]
    cls = torch_cls if torch_cls is not None else getattr(ipex_train.optim, name)
    return cls(params, **cfg)


class Holder(nn.Module):
    """A model that is just a list of parameters (for optimizer-level tests)."""

    def __init__(self, tensors):
        super().__init__()
        self.ps = nn.ParameterList([nn.Parameter(t.clone()) for t in tensors])


def mlp(sizes, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class TinyDLRM(nn.Module):
    """DLRM's shape in miniature: embedding bags and a bottom MLP, pairwise dot
    interaction, a top MLP producing one logit. Dense embedding gradients."""

    def __init__(self, rows=(50, 80, 30), dim=8, dense=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.tables = nn.ModuleList([nn.EmbeddingBag(r, dim, mode="sum") for r in rows])
        self.bottom = nn.Sequential(nn.Linear(dense, 16), nn.ReLU(), nn.Linear(16, dim), nn.ReLU())
        n = len(rows) + 1
        self.top = nn.Sequential(nn.Linear(dim + n * (n - 1) // 2, 16), nn.ReLU(), nn.Linear(16, 1))
        self.pairs = torch.triu_indices(n, n, offset=1)

    def forward(self, dense, sparse):
        vecs = [self.bottom(dense)] + [t(ids) for t, ids in zip(self.tables, sparse)]
        z = torch.stack(vecs, 1)
        dots = torch.bmm(z, z.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]
        return self.top(torch.cat([vecs[0], dots.to(vecs[0].dtype)], 1))
