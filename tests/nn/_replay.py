"""Plain-PyTorch replays shared by the tests of our native epilogues."""
import torch


def column_sums_in_blocks(x, block=64):
    """fp32 column sums of `x` [N, C] in our kernels' fixed order: rows summed
    one by one within each `block`-row block, then the block sums in order."""
    q = x.float()
    total = torch.zeros(x.shape[1])
    for b0 in range(0, x.shape[0], block):
        part = torch.zeros(x.shape[1])
        for r in range(b0, min(b0 + block, x.shape[0])):
            part = part + q[r]
        total = total + part
    return total
