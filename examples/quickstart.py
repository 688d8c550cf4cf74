"""Trains a small MLP with ipex_train.optim.SGD and with torch.optim.SGD(fused=True)
on the same synthetic regression task, and prints loss and step time of each."""
import time

import torch

import ipex_train


def train(opt_cls, steps=200, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1024), torch.nn.ReLU(),
                                torch.nn.Linear(1024, 1))
    kw = dict(lr=0.01, momentum=0.9)
    if opt_cls is torch.optim.SGD:
        kw["fused"] = True
    opt = opt_cls(model.parameters(), **kw)
    x = torch.randn(512, 256)
    y = x[:, :8].sum(1, keepdim=True).tanh()
    step_time = 0.0
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        t = time.perf_counter()
        opt.step()
        step_time += time.perf_counter() - t
    return loss.item(), step_time / steps


if __name__ == "__main__":
    print(f"ipex_train {ipex_train.__version__}, ISA level {ipex_train.isa()}, "
          f"{torch.get_num_threads()} threads")
    ours = train(ipex_train.optim.SGD)
    ref = train(torch.optim.SGD)
    print(f"ipex_train.optim.SGD : final loss {ours[0]:.5f}, optimizer step {ours[1]*1e3:.3f} ms")
    print(f"torch.optim.SGD fused: final loss {ref[0]:.5f}, optimizer step {ref[1]*1e3:.3f} ms")
    print(f"step speed-up: {ref[1] / ours[1]:.2f}x")
