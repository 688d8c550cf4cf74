"""torchrec.models.dlrm.DLRM trained through ipex_train.torchrec.

fp32: the fused model (tables updated in backward, dense params by
ipex_train.optim.SGD) gives the same losses and weights, step by step, as the
untouched TorchRec DLRM trained with dense gradients and torch.optim.SGD.
fp32 and bf16-split (ipex_train.optimize + autocast): the loss on held-out
data falls on synthetic data with real signal, to about the same value.
"""
import copy

import torch

from torchrec import KeyedJaggedTensor
from torchrec.models.dlrm import DLRM

import ipex_train
import ipex_train.torchrec as itr
from tests.torchrec._stepwise import bce, check_matches_torchrec, make_ebc

ROWS = [40, 7, 120, 33]
DIM, DENSE_IN = 8, 5
FEATURES = [f"f{i}" for i in range(len(ROWS))]


def make_dlrm(seed=0):
    torch.manual_seed(seed)
    return DLRM(embedding_bag_collection=make_ebc(ROWS, DIM), dense_in_features=DENSE_IN,
                dense_arch_layer_sizes=[16, DIM], over_arch_layer_sizes=[16, 1])


class Data:
    """Synthetic clicks: each id of each feature has a hidden score; the label
    is drawn from sigmoid(3 * (sum of the bag scores + a dense term))."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.scores = [torch.randn(r, generator=g) for r in ROWS]
        self.dense_w = torch.randn(DENSE_IN, generator=g)

    def batch(self, size, seed):
        g = torch.Generator().manual_seed(seed)
        dense = torch.randn(size, DENSE_IN, generator=g)
        lengths = torch.randint(1, 3, (len(ROWS), size), generator=g)
        ids = [torch.randint(0, r, (int(lengths[i].sum()),), generator=g)
               for i, r in enumerate(ROWS)]
        logit = dense @ self.dense_w * 0.3
        for i, s in enumerate(self.scores):
            bag = torch.repeat_interleave(torch.arange(size), lengths[i])
            logit = logit.index_add(0, bag, s[ids[i]])
        labels = torch.bernoulli(torch.sigmoid(3 * logit), generator=g)
        kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=torch.cat(ids),
                                                  lengths=lengths.flatten())
        return dense, kjt, labels


def test_fuse_embeddings_swaps_the_dlrm_tables():
    model = make_dlrm()
    tables = {id(p) for p in model.sparse_arch.embedding_bag_collection.parameters()}
    fused = itr.fuse_embeddings(model, optimizer="rowwise_adagrad", lr=0.1)
    assert fused is model
    ebc = model.sparse_arch.embedding_bag_collection
    assert isinstance(ebc, itr.FusedEBC) and ebc.optimizer == "rowwise_adagrad"
    dense = list(itr.dense_parameters(model))
    assert dense and not tables & {id(p) for p in dense}
    assert {id(p) for p in dense} == {id(p) for n, p in model.named_parameters()
                                      if "sparse_arch" not in n}


def test_fp32_matches_torchrec_step_by_step():
    lr, data = 0.05, Data()
    ref = make_dlrm()
    ours = itr.fuse_embeddings(copy.deepcopy(ref), optimizer="sgd", lr=lr)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=lr)
    opt = ipex_train.optim.SGD(itr.dense_parameters(ours), lr=lr)
    check_matches_torchrec(ref, ref_opt, ours, opt,
                           [data.batch(16, seed=step) for step in range(5)])


def train_and_eval(dtype, steps=30):
    """Held-out loss (before, after) of a fused DLRM trained with row-wise
    Adagrad tables and ipex_train.optimize'd fused SGD for the dense part."""
    data = Data(seed=1)
    model = itr.fuse_embeddings(make_dlrm(seed=1), optimizer="rowwise_adagrad", lr=0.1,
                                dtype=dtype)
    model, opt = ipex_train.optimize(
        model, ipex_train.optim.SGD(itr.dense_parameters(model), lr=0.1), dtype=dtype)
    held_out = data.batch(512, seed=10**6)
    bf16 = dtype == torch.bfloat16

    def eval_loss():
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            return bce(model, *held_out).item()

    before = eval_loss()
    for step in range(steps):
        batch = data.batch(64, seed=step)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = bce(model, *batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, eval_loss()


def test_dlrm_learns_fp32_and_bf16():
    results = {dtype: train_and_eval(dtype) for dtype in (torch.float32, torch.bfloat16)}
    for dtype, (before, after) in results.items():
        assert after < 0.9 * before, (dtype, before, after)
    fp32, bf16 = results[torch.float32][1], results[torch.bfloat16][1]
    assert abs(bf16 - fp32) < 0.03, (fp32, bf16)
