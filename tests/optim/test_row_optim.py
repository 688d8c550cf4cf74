"""RowWiseAdagrad and SparseAdam as torch.optim classes: every param of every
group is checked before the first write, closures, hooks, state_dict (also
split bf16), add_param_group and lr schedulers. Their update math is compared
with references in tests/sparse/test_sparse_optim.py."""
import copy

import pytest
import torch

import ipex_train
from optim_testlib import assert_training_matches, join_split, split

R, D = 20, 3

# (class, dense grads?): SparseAdam takes sparse grads only, as torch's.
KINDS = [(ipex_train.optim.RowWiseAdagrad, False), (ipex_train.optim.RowWiseAdagrad, True),
         (ipex_train.optim.SparseAdam, False)]
KIND_IDS = ["rowwise-sparse", "rowwise-dense", "sparseadam-sparse"]


def _grad(seed, dense, rows=R):
    """A grad for a [rows, D] param: uncoalesced COO with duplicate rows, or dense."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, rows, (1, 12), generator=g)
    sp = torch.sparse_coo_tensor(idx, torch.randn(12, D, generator=g), (rows, D),
                                 check_invariants=True)
    return sp.to_dense() if dense else sp


def _params(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(R, D, generator=g) for _ in range(n)]


def _set_grads(params, step, dense):
    for i, p in enumerate(params):
        p.grad = _grad(100 * step + i, dense, p.shape[0]).to(p.dtype)


def _snapshot(opt):
    """Every param's and state tensor's bits, and every state key."""
    ps = [p for g in opt.param_groups for p in g["params"]]
    return ([p.detach().clone() for p in ps],
            [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state.get(p, {}).items()}
             for p in ps])


def _assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    for x, y in zip(pa, pb):
        assert x.dtype == y.dtype and torch.equal(x, y)
    assert [s.keys() for s in sa] == [s.keys() for s in sb]
    for x, y in zip(sa, sb):
        for k in x:
            assert (x[k].dtype == y[k].dtype and torch.equal(x[k], y[k])) if torch.is_tensor(x[k]) \
                else x[k] == y[k], k


def _split_last(opt, q):
    top, trail = split(q.detach())
    q.data = top
    q.grad = q.grad.to(torch.bfloat16)
    opt.state[q]["trail"] = trail


def _noncontiguous(opt, q):
    q.data = torch.randn(D, R).t()


def _int_param(opt, q):
    q.data = torch.zeros(R, D, dtype=torch.int32)


def _double_param(opt, q):
    q.data = q.data.double()


def _grown_param(opt, q):  # the grad (and state) no longer match the param's shape
    q.data = torch.randn(R + 1, D)


def _bf16_without_trail(opt, q):
    q.data = q.data.bfloat16()
    q.grad = q.grad.bfloat16()


def _trail_wrong_shape(opt, q):
    _split_last(opt, q)
    opt.state[q]["trail"] = opt.state[q]["trail"][:-1].clone()


def _trail_wrong_dtype(opt, q):
    _split_last(opt, q)
    opt.state[q]["trail"] = opt.state[q]["trail"].int()


def _trail_on_fp32(opt, q):
    opt.state[q]["trail"] = torch.zeros(R, D, dtype=torch.int16)


def _state_dtype(opt, q):
    key = "sum" if isinstance(opt, ipex_train.optim.RowWiseAdagrad) else "exp_avg"
    opt.state[q][key] = opt.state[q][key].double()


def _state_shape(opt, q):
    key = "sum" if isinstance(opt, ipex_train.optim.RowWiseAdagrad) else "exp_avg_sq"
    opt.state[q][key] = torch.zeros(R + 2)


def _row_out_of_range(opt, q):
    q.grad = torch.sparse_coo_tensor(torch.tensor([[0, R]]), torch.ones(2, D), (R, D),
                                     check_invariants=False)


def _negative_row(opt, q):
    q.grad = torch.sparse_coo_tensor(torch.tensor([[-1, 3]]), torch.ones(2, D), (R, D),
                                     check_invariants=False)


def _two_sparse_dims(opt, q):
    q.grad = torch.ones(R, D).to_sparse()


def _dense_grad(opt, q):
    q.grad = torch.ones(R, D)


# name -> (grads it applies to, breaks the last param q, exception, message).
# "any": every kind; "sparse": sparse grads only; "adam": SparseAdam only.
CORRUPTIONS = {
    "noncontiguous": ("any", _noncontiguous, ValueError, "contiguous"),
    "int_param": ("any", _int_param, TypeError, "float32"),
    "double_param": ("any", _double_param, TypeError, "float32"),
    "grown_param": ("any", _grown_param, ValueError, "has shape"),
    "bf16_without_trail": ("any", _bf16_without_trail, TypeError, "trail"),
    "trail_wrong_shape": ("any", _trail_wrong_shape, ValueError, "'trail' has shape"),
    "trail_wrong_dtype": ("any", _trail_wrong_dtype, TypeError, "'trail' must be"),
    "trail_on_fp32": ("any", _trail_on_fp32, TypeError, "trail"),
    "state_dtype": ("any", _state_dtype, TypeError, "state '"),
    "state_shape": ("any", _state_shape, ValueError, "state '.*has shape"),
    "row_out_of_range": ("sparse", _row_out_of_range, IndexError, "out of range"),
    "negative_row": ("sparse", _negative_row, IndexError, "out of range"),
    "two_sparse_dims": ("sparse", _two_sparse_dims, ValueError, "sparse dimension"),
    "dense_grad": ("adam", _dense_grad, RuntimeError, "does not support dense gradients"),
}


def _cases():
    for (cls, dense), kid in zip(KINDS, KIND_IDS):
        for name, (where, *_rest) in CORRUPTIONS.items():
            if where == "any" or (where == "sparse" and not dense) or \
                    (where == "adam" and cls is ipex_train.optim.SparseAdam):
                for fresh in (False, True):
                    if not (fresh and name.startswith("state")):  # no state yet to break
                        yield pytest.param(cls, dense, name, fresh,
                                           id=f"{kid}-{name}-{'fresh' if fresh else 'stepped'}")


@pytest.mark.parametrize("cls,dense,name,fresh", list(_cases()))
def test_bad_last_param_leaves_everything_unchanged(cls, dense, name, fresh):
    """Group 0 holds good params; the LAST param of the LAST group is broken:
    step() raises a clear error naming it, and no param or state changed."""
    _, corrupt, exc, match = CORRUPTIONS[name]
    ps = _params(5)
    opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.1)
    if not fresh:
        _set_grads(ps, 0, dense)
        opt.step()
    _set_grads(ps, 1, dense)
    corrupt(opt, ps[-1])
    before = _snapshot(opt)
    with pytest.raises(exc, match=match) as err:
        opt.step()
    if name != "dense_grad":
        assert "param group 1, param 2" in str(err.value)
    _assert_same(before, _snapshot(opt))


@pytest.mark.parametrize("cls,dense", KINDS, ids=KIND_IDS)
def test_constructor_and_add_param_group_refuse_bad_params(cls, dense):
    with pytest.raises(ValueError, match="CPU"):
        cls([torch.zeros(R, D, device="meta")])
    with pytest.raises(TypeError, match="floating point"):
        cls([torch.zeros(R, D, dtype=torch.int64)])
    opt = cls(_params(1))
    with pytest.raises(ValueError, match="dense tensors"):
        opt.add_param_group({"params": [torch.zeros(R, D).to_sparse()]})
    assert len(opt.param_groups) == 1  # the refused group is not kept


def _train(cls, dense, steps, split_bf16=False, opt_from=None):
    ps = _params(3)
    if split_bf16:
        tops, trails = zip(*[split(p) for p in ps])
        ps = list(tops)
    opt = cls([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.03}], lr=0.1)
    if split_bf16:
        for p, t in zip(ps, trails):
            opt.state[p]["trail"] = t
    for s in range(steps):
        _set_grads(ps, s, dense)
        opt.step()
    return ps, opt


@pytest.mark.parametrize("split_bf16", [False, True], ids=["fp32", "split-bf16"])
@pytest.mark.parametrize("cls,dense", KINDS, ids=KIND_IDS)
def test_state_dict_round_trip_is_bitwise(cls, dense, split_bf16):
    """5 + 5 steps in one optimizer == 5 steps, save, load into a new one, 5 steps."""
    ref, ropt = _train(cls, dense, 10, split_bf16)
    ps, opt = _train(cls, dense, 5, split_bf16)
    sd = copy.deepcopy(opt.state_dict())
    qs = [p.detach().clone() for p in ps]
    opt2 = cls([{"params": qs[:1]}, {"params": qs[1:], "lr": 0.5}], lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups[1]["lr"] == 0.03
    for q in qs:  # trails stay int16, moments fp32 (torch would cast them to bf16)
        st = opt2.state[q]
        assert all(v.dtype == (torch.int16 if k == "trail" else torch.float32)
                   for k, v in st.items() if torch.is_tensor(v))
    for s in range(5, 10):
        _set_grads(qs, s, dense)
        opt2.step()
    _assert_same(_snapshot(ropt), _snapshot(opt2))


def test_sparse_adam_state_dict_interchanges_with_torch():
    ps, opt = _train(ipex_train.optim.SparseAdam, False, 4)
    tps = [p.detach().clone() for p in ps]
    topt = torch.optim.SparseAdam([{"params": tps[:1]}, {"params": tps[1:], "lr": 0.03}], lr=0.1)
    topt.load_state_dict(copy.deepcopy(opt.state_dict()))
    back = ipex_train.optim.SparseAdam([{"params": ps[:1]}, {"params": ps[1:]}])
    back.load_state_dict(copy.deepcopy(topt.state_dict()))
    _assert_same(_snapshot(opt), _snapshot(back))
    assert topt.state[tps[0]]["step"] == 4


@pytest.mark.parametrize("cls,dense", KINDS, ids=KIND_IDS)
def test_closure_hooks_zero_grad(cls, dense):
    """step(closure) runs the closure with grad enabled and returns its loss;
    the result equals calling backward then step()."""
    def make():
        torch.manual_seed(0)
        emb = torch.nn.Embedding(R, D, sparse=not dense)
        return emb, cls(emb.parameters(), lr=0.1)

    x = torch.tensor([1, 4, 1, 7])
    emb, opt = make()
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = emb(x).pow(2).sum()
        loss.backward()
        return loss

    losses = [opt.step(closure) for _ in range(3)]
    assert calls == ["pre", "post"] * 3 and all(torch.is_tensor(v) for v in losses)
    ref, ropt = make()
    for _ in range(3):
        ropt.zero_grad()
        ref(x).pow(2).sum().backward()
        ropt.step()
    assert torch.equal(emb.weight, ref.weight)
    opt.zero_grad()
    assert emb.weight.grad is None
    opt.step()  # no grads: nothing to do
    assert torch.equal(emb.weight, ref.weight)


def test_sparse_adam_scheduler_and_add_param_group_match_torch():
    """lr scheduler, add_param_group, zero_grad and closure as torch.optim.SparseAdam."""
    # coalesced grads: torch sums duplicate rows in another order than we do
    grads = [[_grad(10 * t + i, False).coalesce() for i in range(4)] for t in range(6)]
    assert_training_matches(lambda ps: ipex_train.optim.SparseAdam(ps, lr=0.1),
                            lambda ps: torch.optim.SparseAdam(ps, lr=0.1), _params(4, seed=3),
                            grads, atol=1e-5, first=2, add_at=3, extra_group=dict(lr=0.02),
                            step_size=2)


def test_rowwise_adagrad_scheduler_sets_lr():
    """A scheduled lr is the one applied: halving lr halves the first step."""
    def first_delta(halve):
        p = _params(1)[0]
        w0 = p.clone()
        opt = ipex_train.optim.RowWiseAdagrad([p], lr=0.2)
        if halve:
            torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5)  # sets lr = 0.1
        p.grad = _grad(0, True)
        opt.step()
        return p - w0

    full, half = first_delta(False), first_delta(True)
    torch.testing.assert_close(half, full / 2)


def test_optimize_converts_rowwise_adagrad_to_split_bf16():
    """ipex_train.optimize now takes these classes: the split-bf16 run is bit
    for bit the fp32 run (bf16-representable grads)."""
    def run(dtype):
        torch.manual_seed(1)
        emb = torch.nn.Embedding(R, D, sparse=True)
        opt = ipex_train.optim.RowWiseAdagrad(emb.parameters(), lr=0.1)
        emb, opt = ipex_train.optimize(emb, opt, dtype=dtype)
        for s in range(3):
            opt.zero_grad()
            g = _grad(s, False)
            emb.weight.grad = torch.sparse_coo_tensor(g._indices(), g._values().bfloat16().to(dtype),
                                                      g.shape, check_invariants=True)
            opt.step()
        w = emb.weight.detach()
        if dtype == torch.bfloat16:
            w = join_split(w, opt.state[emb.weight]["trail"])
        return w

    assert torch.equal(run(torch.bfloat16), run(torch.float32))
