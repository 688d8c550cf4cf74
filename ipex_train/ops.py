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


@_register_fake("interaction")
def _interaction_fake(dense, emb):
    f = emb.shape[1]
    return dense.new_empty((dense.shape[0], dense.shape[1] + f * (f + 1) // 2))


@_register_fake("interaction_backward")
def _interaction_backward_fake(grad_out, dense, emb):
    return torch.empty_like(dense, memory_format=torch.contiguous_format), \
        torch.empty_like(emb, memory_format=torch.contiguous_format)


def _interaction_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _interaction_grad(ctx, grad):
    dense, emb = ctx.saved_tensors
    return torch.ops.ipex_train.interaction_backward(grad, dense, emb)


torch.library.register_autograd("ipex_train::interaction", _interaction_grad,
                                setup_context=_interaction_setup)


@_register_fake("relu_bias_grad")
def _relu_bias_grad_fake(grad, out):
    return torch.empty_like(grad, memory_format=torch.contiguous_format), \
        grad.new_empty((grad.shape[1],))
