"""torchrec.models.dlrm.DLRM_DCN (DLRMv2) on multi-hot KJTs, trained through
ipex_train.torchrec.fuse_embeddings: in fp32 the same losses, tables and
dense weights, step by step, as the untouched TorchRec model trained with
dense table gradients and the same torch optimizer rule."""
import copy

import pytest
import torch

from torchrec import KeyedJaggedTensor
from torchrec.models.dlrm import DLRM_DCN

import ipex_train
import ipex_train.torchrec as itr
from tests.torchrec._stepwise import check_matches_torchrec, make_ebc

ROWS = [40, 7, 120, 33, 5]
BAGS = [3, 1, 6, 2, 4]  # most lookups per sample of each feature (lengths 0..BAGS[i])
DIM, DENSE_IN = 8, 5
FEATURES = [f"f{i}" for i in range(len(ROWS))]


def make_dcn(seed=0):
    torch.manual_seed(seed)
    return DLRM_DCN(embedding_bag_collection=make_ebc(ROWS, DIM), dense_in_features=DENSE_IN,
                    dense_arch_layer_sizes=[16, DIM], over_arch_layer_sizes=[16, 1],
                    dcn_num_layers=3, dcn_low_rank_dim=4)


def batch(size, seed):
    """Multi-hot KJT (bags of 0..BAGS[i] ids, repeats allowed), dense, labels."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(size, DENSE_IN, generator=g)
    lengths = torch.cat([torch.randint(0, k + 1, (size,), generator=g) for k in BAGS])
    ids = [torch.randint(0, r, (int(lengths[i * size:(i + 1) * size].sum()),), generator=g)
           for i, r in enumerate(ROWS)]
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=torch.cat(ids),
                                              lengths=lengths)
    return dense, kjt, torch.randint(0, 2, (size,), generator=g).float()


@pytest.mark.parametrize("rule", ["sgd", "adagrad"])
def test_dlrm_dcn_fp32_matches_torchrec_step_by_step(rule):
    lr = 0.05
    ref = make_dcn()
    ours = itr.fuse_embeddings(copy.deepcopy(ref), optimizer=rule, lr=lr)
    torch_cls = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}[rule]
    ours_cls = {"sgd": ipex_train.optim.SGD, "adagrad": ipex_train.optim.Adagrad}[rule]
    ref_opt = torch_cls(ref.parameters(), lr=lr)
    opt = ours_cls(itr.dense_parameters(ours), lr=lr)
    names = check_matches_torchrec(ref, ref_opt, ours, opt,
                                   [batch(16, seed=step) for step in range(4)])
    assert any("crossnet" in n for n in names)
