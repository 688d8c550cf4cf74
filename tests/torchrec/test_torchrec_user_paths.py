"""FusedEBC on a PyTorch user's paths (issue 12): dtype conversion, portable
fp32 state dicts of bf16 tables, features on another device."""
import pytest
import torch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

import ipex_train
import ipex_train.torchrec as itr


def _tables():
    return [EmbeddingBagConfig(name="t0", num_embeddings=10, embedding_dim=4,
                               feature_names=["f0"]),
            EmbeddingBagConfig(name="t1", num_embeddings=5, embedding_dim=3,
                               feature_names=["f1", "f2"])]


def _kjt(device="cpu"):
    return KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([1, 9, 3, 4, 0, 4], device=device),
        lengths=torch.tensor([1, 1, 1, 1, 2, 0], device=device))


def _model(dtype, seed):
    torch.manual_seed(seed)
    model = torch.nn.ModuleDict({"ebc": EmbeddingBagCollection(tables=_tables()),
                                 "head": torch.nn.Linear(10, 1)})
    return itr.fuse_embeddings(model, optimizer="adagrad", lr=0.1, dtype=dtype)


def _train(model, opt):
    with torch.autocast("cpu", torch.bfloat16):
        out = model["head"](model["ebc"](_kjt()).values())
    out.float().sum().backward()
    opt.step()


def test_fp32_state_dict_with_bf16_fused_ebc_loads_into_fp32_model():
    b16 = _model(torch.bfloat16, 0)
    b16, opt = ipex_train.optimize(b16, torch.optim.SGD(itr.dense_parameters(b16), lr=0.1),
                                   dtype=torch.bfloat16)
    _train(b16, opt)
    sd = ipex_train.fp32_state_dict(b16, opt)
    assert not [k for k in sd if "trail" in k]
    f32 = _model(torch.float32, 1)
    f32.load_state_dict(sd)
    for name, w in b16["ebc"].table_weights().items():
        assert torch.equal(f32["ebc"].table_weights()[name], w), name


def test_dtype_conversion_follows_the_module():
    fused = _model(torch.float32, 0)
    before = fused["ebc"].table_weights()
    fused.bfloat16()
    assert fused["ebc"].dtype == torch.bfloat16
    assert fused["head"].weight.dtype == torch.bfloat16
    assert all(g.dtype == torch.bfloat16 for g in fused["ebc"].groups)
    after = fused["ebc"].table_weights()
    assert all(torch.equal(after[k], before[k]) for k in before)  # exact: the masters kept
    fused.float()
    assert fused["ebc"].dtype == torch.float32
    with pytest.raises(TypeError, match="float64"):
        fused["ebc"].double()


def test_features_on_another_device_are_refused():
    fused = _model(torch.float32, 0)["ebc"]
    before = fused.table_weights()
    with pytest.raises(RuntimeError, match=r"features.values\(\) is on meta"):
        fused(_kjt("meta"))
    assert all(torch.equal(w, before[k]) for k, w in fused.table_weights().items())
