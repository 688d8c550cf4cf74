"""The small model's tables and the per-rank batches shared by the
multi-process TorchRec workers (dmp_worker.py, sharder_worker.py), which
import it from their own directory."""
import torch

from torchrec import KeyedJaggedTensor
from torchrec.modules.embedding_configs import PoolingType

LR = 0.05
STEPS = 3
BATCH = 5  # per rank


def table_specs(t1_dim):
    """(name, rows, dim, features, pooling) of each table; t3 reads two features."""
    return [
        ("t0", 23, 8, ["f0"], PoolingType.SUM),
        ("t1", 9, t1_dim, ["f1"], PoolingType.SUM),
        ("t2", 17, 8, ["f2"], PoolingType.MEAN),
        ("t3", 31, 4, ["f3", "f4"], PoolingType.SUM),
    ]


FEATURES = [f for t in table_specs(1) for f in t[3]]
ROWS = {f: t[1] for t in table_specs(1) for f in t[3]}


def batch(step, rank, weighted=False):
    """Deterministic KJT for (step, rank) and its labels; bags of 0..3 ids,
    with per-id weights in [0.5, 1.5) when `weighted`."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    lengths = torch.randint(0, 4, (len(FEATURES), BATCH), generator=g)
    values = torch.cat([torch.randint(0, ROWS[f], (int(lengths[i].sum()),), generator=g)
                        for i, f in enumerate(FEATURES)])
    weights = torch.rand(values.numel(), generator=g) + 0.5 if weighted else None
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=FEATURES, values=values,
                                              lengths=lengths.flatten(), weights=weights)
    labels = torch.randint(0, 2, (BATCH,), generator=g).float()
    return kjt, labels
