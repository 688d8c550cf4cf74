"""Split-bf16 weights cost 4 bytes per parameter: 2 in the bf16 param, 2 in
the int16 trail, and no fp32 copy of the weights survives anywhere."""
import torch
from torch import nn
from torch.multiprocessing.reductions import StorageWeakRef

import ipex_train
from bf16_helpers import TinyDLRM


def _tensors_of(model, opt):
    """Every tensor the model and optimizer hold: params, buffers, grads, state."""
    out = list(model.parameters()) + list(model.buffers())
    out += [p.grad for p in model.parameters() if p.grad is not None]
    for st in opt.state.values():
        out += [v for v in st.values() if isinstance(v, torch.Tensor)]
    return out


def _nbytes(ts):
    seen, total = set(), 0
    for t in ts:
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def test_four_bytes_per_parameter_and_old_fp32_storage_freed():
    model = TinyDLRM(rows=(500, 300, 200), dim=16)
    numel = sum(p.numel() for p in model.parameters())
    old = [StorageWeakRef(p.untyped_storage()) for p in model.parameters()]
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                     dtype=torch.bfloat16)
    assert all(ref.expired() for ref in old), "an fp32 copy of the weights is still alive"

    params = list(model.parameters())
    trails = [opt.state[p]["trail"] for p in params]
    assert all(p.dtype == torch.bfloat16 and t.dtype == torch.int16 for p, t in zip(params, trails))
    assert _nbytes(params) + _nbytes(trails) == 4 * numel
    # One training step later: state is still just the trail, grads are bf16.
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(8, 4, generator=g)
    sparse = [torch.randint(0, r, (8, 2), generator=g) for r in (500, 300, 200)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(dense, sparse)
    out.float().sum().backward()
    opt.step()
    assert all(set(opt.state[p]) == {"trail"} for p in params)
    assert all(p.grad.dtype == torch.bfloat16 for p in params)
    opt.zero_grad()
    assert _nbytes(_tensors_of(model, opt)) == 4 * numel  # TinyDLRM has no buffers
    assert not any(t.dtype == torch.float32 for t in _tensors_of(model, opt))


def test_momentum_state_is_the_only_fp32():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 3))
    numel = sum(p.numel() for p in model.parameters())
    model, opt = ipex_train.optimize(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                     dtype=torch.bfloat16)
    model(torch.randn(4, 64).bfloat16()).float().sum().backward()
    opt.step()
    opt.zero_grad()
    # weights 4 bytes (top + trail) + momentum 4 bytes, nothing else
    assert _nbytes(_tensors_of(model, opt)) == 8 * numel
    fp32 = [t for t in _tensors_of(model, opt) if t.dtype == torch.float32]
    bufs = [opt.state[p]["momentum_buffer"] for p in model.parameters()]
    assert len(fp32) == len(bufs) and all(a is b for a, b in zip(fp32, bufs))
