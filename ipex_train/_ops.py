"""Python side of the native op schemas (native/ops/*.cpp, declared with
TORCH_LIBRARY; written tensors are marked `(a!)` there): fake (meta) kernels,
so every op traces under torch.compile and FakeTensorMode, and the few typed
helpers around them.

Ops that take an update rule take its name ("sgd", "adagrad",
"rowwise_adagrad", "adam"): no rule number is mirrored here.
"""
import torch

from . import _native

_native.load()


def _fake(name):
    return torch.library.register_fake(f"ipex_train::{name}")


# --- dense multi-tensor optimizer steps (optim_ops.cpp) ---------------------

@_fake("check_dense_params")
def _check_dense_params_fake(params, grads, trails, states, steps):
    return None


@_fake("sgd_step_")
def _sgd_step_fake(params, grads, momentum_buffers, trails, lr, weight_decay, momentum,
                   dampening, nesterov, maximize, first_step):
    return None


@_fake("adam_step_")
def _adam_step_fake(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps, trails,
                    lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
                    decoupled_weight_decay):
    return None


@_fake("adagrad_step_")
def _adagrad_step_fake(params, grads, state_sums, state_steps, trails, lr, lr_decay,
                       weight_decay, eps, maximize):
    return None


@_fake("lamb_step_")
def _lamb_step_fake(params, grads, exp_avgs, exp_avg_sqs, state_steps, trails, lr, beta1, beta2,
                    eps, weight_decay, max_trust_ratio, bias_correction, maximize):
    return None


# --- DLRM dense layers (interaction, linear_relu) --------------------------

@_fake("interaction")
def _interaction_fake(dense, emb):
    f = emb.shape[1]
    return dense.new_empty((dense.shape[0], dense.shape[1] + f * (f + 1) // 2))


@_fake("interaction_backward")
def _interaction_backward_fake(grad_out, dense, emb):
    return torch.empty_like(dense, memory_format=torch.contiguous_format), \
        torch.empty_like(emb, memory_format=torch.contiguous_format)


def _interaction_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _interaction_grad(ctx, grad):
    dense, emb = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        from .nn.functional import _grad_through, interaction_reference
        return _grad_through(interaction_reference, (dense, emb), ctx.needs_input_grad, grad)
    return torch.ops.ipex_train.interaction_backward(grad, dense, emb)


torch.library.register_autograd("ipex_train::interaction", _interaction_grad,
                                setup_context=_interaction_setup)


@_fake("relu_bias_grad")
def _relu_bias_grad_fake(grad, out):
    return torch.empty_like(grad, memory_format=torch.contiguous_format), \
        grad.new_empty((grad.shape[1],))


# --- sparse rows and embedding bags (sparse_ops.cpp) ------------------------

@_fake("sparse_add_")
def _sparse_add_fake(weight, trail, indices, values, alpha):
    return None


@_fake("sparse_row_update_")
def _sparse_row_update_fake(params, grads, trails, state1, state2, rule, lr, eps, beta1, beta2,
                            step_size, maximize):
    return None


# Its grads may be sparse COO: meta ones dispatch to SparseMeta (shapes only, as the fake).
_SPARSE_META = torch.library.Library("ipex_train", "IMPL")
_SPARSE_META.impl("sparse_row_update_", _sparse_row_update_fake, "SparseMeta")


@_fake("embedding_bags_forward")
def _embedding_bags_forward_fake(weights, indices, offsets, per_sample_weights, padding_idx,
                                 include_last_offset, mean, out_dtype=None):
    batch = offsets[0].shape[0] - (1 if include_last_offset else 0)
    width = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((batch, width), dtype=out_dtype or weights[0].dtype)


@_fake("embedding_bags_backward_update_")
def _embedding_bags_backward_update_fake(weights, trails, state1, state2, grad_output, indices,
                                         offsets, per_sample_weights, padding_idx,
                                         include_last_offset, mean, rule, lr, eps, beta1, beta2,
                                         step_size, maximize):
    return None


@_fake("_advise_hugepages")
def _advise_hugepages_fake(t):
    return None


def table_tensor(shape, dtype):
    """An uninitialised CPU tensor for an embedding table or its state, backed by
    transparent huge pages where the OS allows (fewer TLB misses on random rows).
    Write it before use: pages are chosen on first touch."""
    t = torch.empty(shape, dtype=dtype)
    if t.numel():
        torch.ops.ipex_train._advise_hugepages(t)
    return t


# --- DCNv2 cross-layer epilogues (cross_ops.cpp) -----------------------------

@_fake("cross_forward_")
def _cross_forward_fake(y, c, x0, xl):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


@_fake("cross_backward_")
def _cross_backward_fake(g, x0, z, acc, accumulate, add_g):
    return torch.empty_like(g, memory_format=torch.contiguous_format), g.new_empty((g.shape[1],))
