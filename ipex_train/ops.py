"""Python side of the native op schemas: fake (meta) kernels, so every op
traces under torch.compile / FakeTensorMode, and thin typed entry points.

The schemas themselves are declared in C++ (native/ops/*.cpp) with
TORCH_LIBRARY; mutated tensors are marked `(a!)` there.
"""
import torch

from . import _native

_native.load()


def _register_fake(name):
    return torch.library.register_fake(f"ipex_train::{name}")


@_register_fake("sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, trails, lr, weight_decay, momentum,
                   dampening, nesterov, maximize, first_step):
    return None
