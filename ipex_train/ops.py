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


@_register_fake("check_dense_params")
def _check_dense_params_fake(params, grads, trails):
    return None


@_register_fake("sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, trails, lr, weight_decay, momentum,
                   dampening, nesterov, maximize, first_step):
    return None


@_register_fake("adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, trails,
                    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                    decoupled_weight_decay):
    return None


@_register_fake("adagrad_step_")
def _adagrad_step_fake(params, grads, state_sums, state_steps, trails, lr, lr_decay,
                       weight_decay, eps, maximize):
    return None


@_register_fake("lamb_step_")
def _lamb_step_fake(params, grads, exp_avgs, exp_avg_sqs, state_steps, trails, lr, beta1, beta2,
                    eps, weight_decay, max_trust_ratio, bias_correction, maximize):
    return None
