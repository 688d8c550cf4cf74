"""Every custom autograd Function / differentiable op we ship runs forward and
backward under torch.autocast("cpu", torch.bfloat16) with fp32 parameters,
and its gradients come back in the inputs' dtypes. (DenseArch, which used to
crash here, is tested in tests/dlrm/test_model.py.)"""
import os
import sys

import torch
import torch.distributed as dist

from ipex_train.nn.functional import interaction
from ipex_train.sparse import FusedEmbeddingBagCollection

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_fused_embedding_collection_under_autocast():
    torch.manual_seed(0)
    tabs = FusedEmbeddingBagCollection([(10, 4), (7, 4)], mode="sum", optimizer="sgd", lr=0.5)
    before = [w.clone() for w in tabs._weights()]
    idx = [torch.tensor([1, 2, 3]), torch.tensor([0, 6])]
    off = [torch.tensor([0, 2]), torch.tensor([0, 1])]
    lin = torch.nn.Linear(8, 1)
    with _autocast():
        out = lin(tabs(idx, off))  # the linear runs in bf16, the lookup in fp32
    assert out.dtype == torch.bfloat16
    out.sum().backward()
    assert lin.weight.grad.dtype == torch.float32
    assert any(not torch.equal(a, b) for a, b in zip(before, tabs._weights()))


def test_interaction_under_autocast_with_fp32_mlp():
    torch.manual_seed(0)
    bottom, top = torch.nn.Linear(5, 8), torch.nn.Linear(8 + 6, 1)
    emb = torch.randn(4, 3, 8, requires_grad=True)
    with _autocast():
        out = top(interaction(bottom(torch.randn(4, 5)), emb))
    out.sum().backward()
    assert emb.grad.dtype == bottom.weight.grad.dtype == top.weight.grad.dtype == torch.float32


def test_embedding_all_to_all_under_autocast(tmp_path):
    sys.path.insert(0, EXAMPLES)
    from dlrm.parallel import EmbeddingAllToAll

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        local = torch.randn(4, 6, requires_grad=True)
        lin = torch.nn.Linear(6, 1)
        with _autocast():
            emb = EmbeddingAllToAll.apply(local, [[0, 1, 2]], 2, [4], 0, dist.group.WORLD)
            out = lin(emb.view(4, 6))
        out.sum().backward()
        assert local.grad.dtype == torch.float32
        torch.testing.assert_close(local.grad, lin.weight.detach().expand(4, 6).bfloat16().float())
    finally:
        dist.destroy_process_group()
