"""Bad configs and bad inputs raise clear errors before anything is written."""
import pytest
import torch

from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

import ipex_train.torchrec as itr


def tables(pooling=PoolingType.SUM):
    return [EmbeddingBagConfig(name="t0", num_embeddings=10, embedding_dim=4,
                               feature_names=["f0"], pooling=pooling),
            EmbeddingBagConfig(name="t1", num_embeddings=5, embedding_dim=3,
                               feature_names=["f1", "f2"])]


def kjt(keys=("f0", "f1", "f2"), values=(1, 2, 3, 4), weights=None):
    n = len(keys)
    lengths = [0] * (2 * n)
    for i in range(len(values)):
        lengths[i % (2 * n)] += 1
    return KeyedJaggedTensor.from_lengths_sync(
        keys=list(keys), values=torch.tensor(values), lengths=torch.tensor(lengths),
        weights=None if weights is None else torch.tensor(weights))


@pytest.mark.parametrize("kwargs, match", [
    (dict(optimizer="adam"), "optimizer must be one of"),
    (dict(lr=-1.0), "lr must be"),
    (dict(dtype=torch.float16), "dtype must be"),
    (dict(weights={"t9": torch.zeros(10, 4)}), "t9"),
    (dict(weights={"t0": torch.zeros(10, 5)}), "shape"),
    (dict(weights={"t0": torch.zeros(10, 4, device="meta")}), "meta"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        itr.FusedEBC(tables(), **kwargs)


def test_bad_tables():
    with pytest.raises(ValueError, match="empty"):
        itr.FusedEBC([])
    with pytest.raises(ValueError, match="SUM pooling"):
        itr.FusedEBC(tables(PoolingType.MEAN), is_weighted=True)
    with pytest.raises(ValueError, match="pooling"):
        itr.FusedEBC(tables(PoolingType.NONE))
    dup = tables() + [EmbeddingBagConfig(name="t0", num_embeddings=2, embedding_dim=4,
                                         feature_names=["f3"])]
    with pytest.raises(ValueError, match="duplicate"):
        itr.FusedEBC(dup)


def test_meta_ebc_is_refused():
    ebc = EmbeddingBagCollection(tables=tables(), device=torch.device("meta"))
    with pytest.raises(ValueError, match="meta"):
        itr.fuse_embeddings(ebc)


def test_module_without_ebc():
    with pytest.raises(ValueError, match="no torchrec EmbeddingBagCollection"):
        itr.fuse_embeddings(torch.nn.Linear(2, 2))


def test_shared_ebc_becomes_one_fused_module():
    ebc = EmbeddingBagCollection(tables=tables())
    outer = torch.nn.ModuleDict({"a": ebc, "b": torch.nn.ModuleDict({"c": ebc})})
    itr.fuse_embeddings(outer)
    assert isinstance(outer["a"], itr.FusedEBC) and outer["a"] is outer["b"]["c"]


def test_bad_features():
    fused = itr.FusedEBC(tables())
    before = fused.table_weights()
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['f2'\]"):
        fused(kjt(keys=("f0", "f1")))
    with pytest.raises(TypeError, match="KeyedJaggedTensor"):
        fused({"f0": torch.tensor([1])})
    with pytest.raises(TypeError, match="integer ids"):
        fused(kjt(values=(1.0, 2.0)))
    weighted = itr.FusedEBC(tables(), is_weighted=True)
    with pytest.raises(ValueError, match="no weights"):
        weighted(kjt())
    for name, w in fused.table_weights().items():
        assert torch.equal(w, before[name])


@pytest.mark.parametrize("bad", [10, -1])
def test_out_of_range_ids_raise_and_write_nothing(bad):
    fused = itr.FusedEBC(tables(), lr=1.0)
    before = fused.table_weights()
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        fused(kjt(values=(1, 2, 3, bad))).values().sum().backward()
    for name, w in fused.table_weights().items():
        assert torch.equal(w, before[name]), name
