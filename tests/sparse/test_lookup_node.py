"""The fused lookup's autograd node (native/python/lookup.cpp): what it reads
when the backward runs (lr, eps, the tables' buffers), errors raised there,
and that the common path runs no Python code of ours in the backward."""
import gc
import os
import sys

import pytest
import torch

import ipex_train
from ipex_train.sparse import FusedEmbeddingBag, FusedEmbeddingBagCollection

from _bags import random_bags

_OURS = os.path.dirname(os.path.abspath(ipex_train.__file__))


def _pair(optimizer="rowwise_adagrad", **kw):
    torch.manual_seed(0)
    a = FusedEmbeddingBag(50, 8, mode="sum", optimizer=optimizer, lr=0.1, **kw)
    b = FusedEmbeddingBag(50, 8, mode="sum", optimizer=optimizer, lr=0.1, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def _batch(seed=0):
    idx, off = random_bags(50, 12, torch.Generator().manual_seed(seed))
    return idx, off, torch.randn(12, 8, generator=torch.Generator().manual_seed(seed + 1))


def test_backward_reads_lr_and_eps_when_it_runs():
    """lr and eps set between forward and backward (by assignment, or by
    optimizer.load_state_dict, which replaces param_groups) are the ones used."""
    idx, off, g = _batch()
    a, b = _pair()
    out = a(idx, off)
    a.optimizer.param_groups[0]["lr"] = 0.7
    a.optimizer.param_groups[0]["eps"] = 0.5
    out.backward(g)
    b.optimizer.param_groups[0]["lr"] = 0.7
    b.optimizer.param_groups[0]["eps"] = 0.5
    b(idx, off).backward(g)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.table(0).state_sum,
                                                          b.table(0).state_sum)
    out = a(idx, off)
    state = b.optimizer.state_dict()
    state["param_groups"][0]["lr"] = 0.25
    a.optimizer.load_state_dict(state)
    out.backward(g)
    b.optimizer.param_groups[0]["lr"] = 0.25
    b(idx, off).backward(g)
    assert torch.equal(a.weight, b.weight)


def test_backward_updates_the_buffers_present_when_it_runs():
    """A storage conversion between forward and backward: the update lands in
    the new (bf16 split) tables, exactly as if converted after the update."""
    idx, off, g = _batch()
    a, b = _pair()
    out = a(idx, off)
    a.bfloat16()
    out.backward(g)
    b(idx, off).backward(g)
    b.bfloat16()
    assert a.trail is not None
    assert torch.equal(a.table(0).master_weight(), b.table(0).master_weight())


def test_python_errors_in_backward_keep_their_type_and_change_nothing():
    idx, off, g = _batch()
    a, _ = _pair()
    before = a.weight.clone()
    out = a(idx, off)
    a.optimizer.param_groups[0]["lr"] = "fast"
    with pytest.raises(ValueError, match="could not convert string to float: 'fast'"):
        out.backward(g)
    a.optimizer.param_groups[0]["lr"] = 0.1
    out = a(idx, off)
    del a.optimizer.param_groups[0]["eps"]
    with pytest.raises(KeyError, match="eps"):
        out.backward(g)
    assert torch.equal(a.weight, before)


def test_the_graph_keeps_the_tables_alive():
    """The node holds the tables and the optimizer: dropping the module before
    the backward still updates its tables (as the Python autograd.Function's
    context did)."""
    idx, off, g = _batch()
    a, b = _pair("sgd")
    w = a.weight
    out = a(idx, off)
    del a
    gc.collect()
    out.backward(g)
    b(idx, off).backward(g)
    assert torch.equal(w, b.weight)
    del out
    gc.collect()


def test_common_path_and_checked_path_agree():
    """Non-contiguous offsets and tuples take the checked Python path, plain
    lists the native one: same output, same update, bit for bit."""
    torch.manual_seed(0)
    a = FusedEmbeddingBagCollection([(30, 4), (20, 3)], mode="mean", optimizer="adagrad",
                                    include_last_offset=True)
    b = FusedEmbeddingBagCollection([(30, 4), (20, 3)], mode="mean", optimizer="adagrad",
                                    include_last_offset=True)
    b.load_state_dict(a.state_dict())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        bags = [random_bags(r, 7, gen, include_last=True) for r in (30, 20)]
        idx, off = [x[0] for x in bags], [x[1] for x in bags]
        strided = [torch.stack([o, o], 1)[:, 0] for o in off]
        assert not strided[0].is_contiguous()
        g = torch.randn(7, 7, generator=gen)
        out_a = a(idx, off)
        out_b = b(tuple(idx), strided)
        assert torch.equal(out_a, out_b)
        out_a.backward(g)
        out_b.backward(g)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_anomaly_mode_and_hooks():
    idx, off, g = _batch()
    a, b = _pair("sgd")
    seen = []
    with torch.autograd.detect_anomaly():
        out = a(idx, off)
        out.register_hook(lambda grad: seen.append(grad.clone()))
        out.backward(g)
    b(idx, off).backward(g)
    assert torch.equal(a.weight, b.weight) and torch.equal(seen[0], g)


def test_common_path_runs_none_of_our_python_in_backward():
    """The update runs in the native node: no Python function of ipex_train is
    called during the backward, and the forward calls only the module's
    forward and its one-line hop to the native lookup (no autograd.Function,
    no per-table checks in Python)."""
    idx, off, g = _batch()
    emb = FusedEmbeddingBag(50, 8, mode="sum", optimizer="rowwise_adagrad")
    coll = FusedEmbeddingBagCollection([(50, 8), (50, 4)], mode="sum")
    calls = []

    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(_OURS):
            calls.append(frame.f_code.co_name)

    for module, args in ((emb, (idx, off)), (coll, ([idx, idx], [off, off]))):
        sys.setprofile(prof)
        try:
            out = module(*args)
        finally:
            sys.setprofile(None)
        assert calls == ["forward", "_native_lookup"], calls
        calls.clear()
        before = module.table(0).weight.clone()
        grad = torch.ones_like(out)
        sys.setprofile(prof)
        try:
            out.backward(grad)
        finally:
            sys.setprofile(None)
        assert calls == [], calls
        assert not torch.equal(module.table(0).weight, before)


def test_a_collection_holding_its_own_output_is_freed():
    """The node holds the tables and the optimizer, not the collection: a
    collection that keeps its last output (a cycle through the C++ node, which
    Python's garbage collector cannot see) is still freed once dropped. It was
    not while the node held the collection."""
    import weakref
    idx, off, _ = _batch()
    a, _ = _pair("rowwise_adagrad")
    a.last = a(idx, off)
    ref = weakref.ref(a)
    del a
    gc.collect()
    assert ref() is None


def test_under_torch_compile_same_updates_and_no_warning():
    """torch.compile breaks the graph around the native lookup (Dynamo cannot
    trace the extension's builtin; it warned so before) and the updates equal
    eager mode's."""
    import warnings
    idx, off, g = _batch()
    a, b = _pair("rowwise_adagrad")
    step = torch.compile(lambda i, o: a(i, o) * 2.0, backend="eager")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            step(idx, off).backward(g)
    assert not [w for w in seen if "trace" in str(w.message)], [str(w.message) for w in seen]
    for _ in range(2):
        (b(idx, off) * 2.0).backward(g)
    assert torch.equal(a.weight, b.weight)
    torch._dynamo.reset()


def test_activation_checkpointing_updates_once():
    """torch.utils.checkpoint (non-reentrant) recomputes the forward inside
    the backward: the tables still get exactly one update, the same as
    without checkpointing (the recomputed lookup's node is not the one the
    backward runs)."""
    from torch.utils.checkpoint import checkpoint
    idx, off, g = _batch()
    a, b = _pair("rowwise_adagrad")
    lin = torch.nn.Linear(8, 3)
    for _ in range(2):
        checkpoint(lambda i, o: lin(a(i, o)), idx, off, use_reentrant=False).backward(
            g[:, :3])
        lin(b(idx, off)).backward(g[:, :3])
    assert torch.equal(a.weight, b.weight)
    assert torch.equal(a.table(0).state_sum, b.table(0).state_sum)
