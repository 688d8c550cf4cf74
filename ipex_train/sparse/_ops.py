"""Fake (meta) kernels of the sparse / embedding-bag ops (native/ops/sparse_ops.cpp),
so they trace under torch.compile and FakeTensorMode."""
import torch

from .. import _native

_native.load()

# Update kinds understood by the native row-update kernels (kernels/embedding.h).
SGD, ADAGRAD, ROWWISE_ADAGRAD, ADAM = 0, 1, 2, 3


@torch.library.register_fake("ipex_train::sparse_add_")
def _sparse_add_fake(weight, trail, indices, values, alpha):
    return None


@torch.library.register_fake("ipex_train::sparse_row_update_")
def _sparse_row_update_fake(weight, trail, state1, state2, indices, values, kind, lr, eps, beta1,
                            beta2, step_size, maximize):
    return None


@torch.library.register_fake("ipex_train::embedding_bags_forward")
def _embedding_bags_forward_fake(weights, indices, offsets, per_sample_weights, padding_idx,
                                 include_last_offset, mean):
    batch = offsets[0].shape[0] - (1 if include_last_offset else 0)
    width = sum(w.shape[1] for w in weights)
    return weights[0].new_empty((batch, width))


@torch.library.register_fake("ipex_train::embedding_bags_backward_update_")
def _embedding_bags_backward_update_fake(weights, trails, state1, state2, grad_output, indices,
                                         offsets, per_sample_weights, padding_idx,
                                         include_last_offset, mean, kind, lr, eps, beta1, beta2,
                                         step_size, maximize):
    return None


@torch.library.register_fake("ipex_train::_advise_hugepages")
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
