"""FusedEBC against torchrec's own EmbeddingBagCollection and FBGEMM.

Forward: same KeyedTensor (keys, length_per_key, values) as torchrec's EBC
holding the same weights. Training: N steps of our in-backward update equal
torchrec's EBC with dense gradients + torch.optim (SGD, Adagrad; row-wise
Adagrad written out in plain PyTorch), and FBGEMM's fused CPU kernels
(EXACT_SGD / EXACT_ADAGRAD / EXACT_ROWWISE_ADAGRAD) through torchrec's
FusedEmbeddingBagCollection.
"""
import pytest
import torch

import torchrec
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

import ipex_train.torchrec as itr

SUM, MEAN = PoolingType.SUM, PoolingType.MEAN
CONFIGS = {
    # name: [(table, rows, dim, features, pooling)]
    "one": [("t0", 11, 8, ["f0"], SUM)],
    "mixed": [("t0", 23, 8, ["f0"], SUM), ("t1", 7, 3, ["f1"], MEAN),
              ("t2", 1, 17, ["f2"], SUM), ("t3", 13, 5, ["f3"], MEAN)],
    # t1 shared by f1, f2; f0 read by t0 and t2 ("f0@t0", "f0@t2")
    "shared": [("t0", 19, 4, ["f0"], SUM), ("t1", 9, 7, ["f1", "f2"], MEAN),
               ("t2", 5, 4, ["f3", "f0"], SUM), ("t3", 6, 2, ["f4"], SUM)],
    # FBGEMM's kernels need dims that are multiples of 4; one pooling type,
    # because torchrec's unsharded FusedEmbeddingBagCollection mislabels
    # interleaved pooling groups (test_torchrec_fused_ebc_mislabels_...)
    "fbgemm": [("t0", 19, 4, ["f0"], SUM), ("t1", 9, 8, ["f1", "f2"], SUM),
               ("t2", 5, 4, ["f3"], SUM)],
}
EPS = 1e-8


def make_ebc(config, weighted=False, seed=0):
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=n, num_embeddings=r, embedding_dim=d,
                                 feature_names=list(fs), pooling=SUM if weighted else p)
              for n, r, d, fs, p in CONFIGS[config]]
    return EmbeddingBagCollection(tables=tables, is_weighted=weighted)


def make_kjt(config, batch, seed, weighted=False, extra_key=False, shuffle_keys=True):
    """KJT over every feature of `config` (keys in a shuffled order), bags of 0..4 ids."""
    g = torch.Generator().manual_seed(seed)
    rows = {f: r for _, r, _, fs, _ in CONFIGS[config] for f in fs}
    keys = sorted(rows) + (["unused"] if extra_key else [])
    rows["unused"] = 3
    if shuffle_keys:
        keys = [keys[i] for i in torch.randperm(len(keys), generator=g)]
    lengths = torch.randint(0, 5, (len(keys), batch), generator=g)
    values = torch.cat([torch.randint(0, rows[k], (int(lengths[i].sum()),), generator=g)
                        for i, k in enumerate(keys)])
    weights = torch.rand(values.numel(), generator=g) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values,
                                               lengths=lengths.flatten(), weights=weights)


def truncate_bf16(w):
    """The fp32 value a bf16-split table computes with: the top 16 bits."""
    return (w.contiguous().view(torch.int32) & -65536).view(torch.float32)


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_matches_torchrec(config, batch, weighted, dtype):
    ebc = make_ebc(config, weighted)
    fused = itr.FusedEBC.from_ebc(ebc, dtype=dtype)
    kjt = make_kjt(config, batch, seed=batch, weighted=weighted, extra_key=True)
    # the fp32 master values are kept exactly (bf16-split is a bit partition)
    for name, w in fused.table_weights().items():
        assert torch.equal(w, ebc.embedding_bags[name].weight.detach()), name
    if dtype == torch.bfloat16:
        with torch.no_grad():
            for bag in ebc.embedding_bags.values():
                bag.weight.copy_(truncate_bf16(bag.weight))
    want, got = ebc(kjt), fused(kjt)
    assert got.keys() == want.keys()
    assert got.length_per_key() == want.length_per_key()
    assert got.values().dtype == torch.float32
    tol = {} if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got.values(), want.values(), **tol)


def loss_of(kt, seed):
    """A loss whose gradient differs per output element; independent of key order."""
    g = torch.Generator().manual_seed(seed)
    per_key = kt.to_dict()
    return sum((per_key[k] * torch.randn(per_key[k].shape, generator=g)).sum()
               for k in sorted(per_key))


def train(module, optimizer, config, steps, weighted, batch=6):
    for step in range(steps):
        kjt = make_kjt(config, batch, seed=100 + step, weighted=weighted)
        kt = module(kjt)
        if optimizer is not None:
            optimizer.zero_grad()
        loss_of(kt, step).backward()
        if optimizer is not None:
            optimizer.step()


def weights_of(module):
    if isinstance(module, itr.FusedEBC):
        return module.table_weights()
    return {k.split(".")[1]: v.detach() for k, v in module.state_dict().items()}


class RowWiseAdagradRef(torch.optim.Optimizer):
    """Plain-PyTorch row-wise Adagrad on dense gradients (FBGEMM's math).

    state[row] += mean(g[row]^2); w[row] -= lr * g[row] / (sqrt(state[row]) + eps).
    Rows with a zero gradient are left unchanged, as in the sparse update.
    """

    def __init__(self, params, lr, eps):
        super().__init__(params, dict(lr=lr, eps=eps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                s = self.state[p].setdefault("sum", torch.zeros(p.shape[0]))
                s += (p.grad * p.grad).mean(1)
                p -= group["lr"] * p.grad / (s.sqrt() + group["eps"])[:, None]


TORCH_REFS = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "adagrad": lambda ps, lr: torch.optim.Adagrad(ps, lr=lr, eps=EPS),
    "rowwise_adagrad": lambda ps, lr: RowWiseAdagradRef(ps, lr=lr, eps=EPS),
}
FBGEMM_OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad,
                     "rowwise_adagrad": torchrec.optim.RowWiseAdagrad}


def fused_for(ebc, optimizer, lr, dtype=torch.float32):
    kwargs = {} if optimizer == "sgd" else {"eps": EPS}
    return itr.FusedEBC.from_ebc(ebc, optimizer=optimizer, lr=lr, dtype=dtype, **kwargs)


def assert_same_tables(got, want, tol):
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], **tol,
                                   msg=lambda m: f"table {name}: {m}")


@pytest.mark.parametrize("config", ["mixed", "shared"])
@pytest.mark.parametrize("optimizer", sorted(TORCH_REFS))
@pytest.mark.parametrize("weighted", [False, True])
def test_training_matches_torch_reference(config, optimizer, weighted):
    """torchrec EBC with dense grads + a torch optimizer, odd dims included."""
    lr, steps = 0.1, 4
    ebc = make_ebc(config, weighted)
    fused = fused_for(ebc, optimizer, lr)
    before = weights_of(fused)
    train(fused, None, config, steps, weighted)
    train(ebc, TORCH_REFS[optimizer](ebc.parameters(), lr), config, steps, weighted)
    got = weights_of(fused)
    assert_same_tables(got, weights_of(ebc), dict(rtol=1e-5, atol=1e-6))
    assert any(not torch.equal(before[n], got[n]) for n in got), "nothing was trained"


@pytest.mark.parametrize("optimizer", sorted(FBGEMM_OPTIMIZERS))
@pytest.mark.parametrize("weighted", [False, True])
def test_training_matches_fbgemm(optimizer, weighted):
    """torchrec's FusedEmbeddingBagCollection: FBGEMM's fused CPU kernels."""
    lr, steps, config = 0.1, 4, "fbgemm"
    ebc = make_ebc(config, weighted)
    fused = fused_for(ebc, optimizer, lr)
    ref = FusedEmbeddingBagCollection(
        ebc.embedding_bag_configs(), optimizer_type=FBGEMM_OPTIMIZERS[optimizer],
        optimizer_kwargs={"lr": lr, **({} if optimizer == "sgd" else {"eps": EPS})},
        is_weighted=weighted)
    sd = ref.state_dict()
    with torch.no_grad():
        for name, bag in ebc.embedding_bags.items():
            sd[f"embedding_bags.{name}.weight"].copy_(bag.weight)
    train(fused, None, config, steps, weighted)
    train(ref, None, config, steps, weighted)
    assert_same_tables(weights_of(fused), weights_of(ref), dict(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_independent_of_threads(dtype, threads):
    """Same tables after training with 1 and 2 threads, bit for bit."""
    results = []
    for n in (1, 2):
        threads(n)
        fused = itr.FusedEBC.from_ebc(make_ebc("shared"), optimizer="rowwise_adagrad",
                                      lr=0.05, dtype=dtype)
        train(fused, None, "shared", 3, False, batch=9)
        results.append(fused.table_weights())
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name


def test_bf16_training_tracks_fp32():
    """bf16-split tables follow the fp32 run to bf16 precision."""
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        fused = itr.FusedEBC.from_ebc(make_ebc("mixed"), optimizer="sgd", lr=0.1, dtype=dtype)
        train(fused, None, "mixed", 4, False)
        runs[dtype] = fused.table_weights()
    for name, w in runs[torch.float32].items():
        torch.testing.assert_close(runs[torch.bfloat16][name], w, rtol=2e-2, atol=2e-2)


def test_to_torchrec_round_trip():
    fused = itr.FusedEBC.from_ebc(make_ebc("shared"), lr=0.1)
    train(fused, None, "shared", 2, False)
    back = fused.to_torchrec()
    kjt = make_kjt("shared", 5, seed=9)
    torch.testing.assert_close(back(kjt).values(), fused(kjt).values())


@pytest.mark.parametrize("config", ["mixed", "shared"])
def test_empty_bags_and_empty_batch(config):
    fused = itr.FusedEBC.from_ebc(make_ebc(config))
    keys = sorted({f for _, _, _, fs, _ in CONFIGS[config] for f in fs})
    width = sum(d * len(fs) for _, _, d, fs, _ in CONFIGS[config])
    empty_bags = KeyedJaggedTensor.from_lengths_sync(
        keys=keys, values=torch.zeros(0, dtype=torch.long),
        lengths=torch.zeros(len(keys) * 3, dtype=torch.long))
    out = fused(empty_bags)
    assert out.values().shape == (3, width)
    assert torch.count_nonzero(out.values()) == 0
    out.values().sum().backward()  # nothing to update
    # batch of 0 (torchrec's own EBC raises an IndexError on this one)
    no_batch = KeyedJaggedTensor(keys=keys, values=torch.zeros(0, dtype=torch.long),
                                 lengths=torch.zeros(0, dtype=torch.long), stride=0)
    assert fused(no_batch).values().shape == (0, width)


def test_int32_ids():
    ebc = make_ebc("shared")
    fused = itr.FusedEBC.from_ebc(ebc)
    kjt = make_kjt("shared", 4, seed=3)
    kjt32 = KeyedJaggedTensor.from_lengths_sync(keys=kjt.keys(), values=kjt.values().int(),
                                                lengths=kjt.lengths().int())
    torch.testing.assert_close(fused(kjt32).values(), ebc(kjt).values())


def test_lr_lives_in_embedding_optimizers():
    fused = itr.FusedEBC.from_ebc(make_ebc("shared"), optimizer="sgd", lr=0.1)
    opts = fused.embedding_optimizers()
    assert len(opts) == len(fused.groups) > 1
    for o in opts:
        o.param_groups[0]["lr"] = 0.0
    before = fused.table_weights()
    train(fused, None, "shared", 2, False)
    for name, w in fused.table_weights().items():
        assert torch.equal(w, before[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_state_dict_resume_is_exact(dtype):
    """2 steps, save, load into a fresh module, 2 more == 4 uninterrupted steps."""
    def make():
        return fused_for(make_ebc("shared", seed=5), "rowwise_adagrad", 0.1, dtype)

    straight = make()
    train(straight, None, "shared", 4, False)
    first = make()
    train(first, None, "shared", 2, False)
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    for step in range(2, 4):  # the same batches the straight run saw
        loss_of(resumed(make_kjt("shared", 6, seed=100 + step)), step).backward()
    for name, w in straight.table_weights().items():
        assert torch.equal(resumed.table_weights()[name], w), name


@pytest.mark.xfail(strict=True, reason="torchrec 1.8 FusedEmbeddingBagCollection: with "
                   "tables pooled SUM, MEAN, SUM its values come grouped by pooling "
                   "(t0, t2, t1) while its keys stay in table order (f0, f1, f2)")
def test_torchrec_fused_ebc_mislabels_interleaved_pooling():
    """Why the FBGEMM comparisons above use a single pooling type."""
    tables = [EmbeddingBagConfig(name=f"t{i}", num_embeddings=5, embedding_dim=4,
                                 feature_names=[f"f{i}"], pooling=p)
              for i, p in enumerate([SUM, MEAN, SUM])]
    ebc = EmbeddingBagCollection(tables)
    peer = FusedEmbeddingBagCollection(tables, optimizer_type=torch.optim.SGD,
                                       optimizer_kwargs={"lr": 0.1})
    sd = peer.state_dict()
    with torch.no_grad():
        for name, value in ebc.state_dict().items():
            sd[name].copy_(value)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=["f0", "f1", "f2"], values=torch.tensor([0, 1, 2, 3, 4, 1]),
        lengths=torch.tensor([1, 1, 2, 1, 1, 0]))
    want, got = ebc(kjt).to_dict(), peer(kjt).to_dict()
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=lambda m: f"{key}: {m}")


def test_default_init_follows_torchrec():
    """Without weights, tables start like torchrec's: within +-1/sqrt(rows)."""
    tables = make_ebc("mixed").embedding_bag_configs()
    fused = itr.FusedEBC(tables)
    for t in tables:
        w = fused.table_weights()[t.name]
        bound = t.num_embeddings ** -0.5
        assert w.abs().max() <= bound and w.std() > 0, t.name


@pytest.mark.parametrize("bad", [-1, 9])
def test_out_of_range_id_names_feature_and_table(bad):
    """The kernel's IndexError numbers its own per-group lists ("indices[0][3]"),
    which a TorchRec user cannot map back; the collection names the feature, the
    table and the id."""
    ebc = make_ebc("shared")
    fused = itr.FusedEBC.from_ebc(ebc, optimizer="sgd", lr=0.1)
    kjt = make_kjt("shared", 3, seed=5, shuffle_keys=False)
    keys = kjt.keys()
    values = kjt.values().clone()
    lo = kjt.offset_per_key()[keys.index("f2")]
    assert kjt.offset_per_key()[keys.index("f2") + 1] > lo + 1  # f2 (table t1, 9 rows) has ids
    values[lo + 1] = bad
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=kjt.lengths())
    with pytest.raises(IndexError, match=rf"feature 'f2': id {bad} \(value 1 of the feature's "
                                         r"values\) is out of range for table 't1' of 9 rows"):
        fused(kjt)
