"""Embedding training step: ipex_train.torchrec.FusedEBC vs TorchRec + FBGEMM.

One question: for a Criteo-shaped EmbeddingBagCollection (26 one-hot
features, dim 64, Zipf-skewed ids, batch 2048), how long does forward +
backward-with-update take with our fused kernels (fp32 and bf16-split)
against TorchRec's FusedEmbeddingBagCollection (FBGEMM's fused CPU kernel,
the peer), same optimizer, same run? Prints ms/step and the ratio.

    python benchmarks/torchrec_ebc.py [--rows 100000] [--steps 20]
"""
import argparse
import time

import torch
import torchrec
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor
from torchrec.modules.fused_embedding_modules import FusedEmbeddingBagCollection

import ipex_train.torchrec as itr

# Criteo Kaggle's 26 categorical cardinalities, capped by --rows
CRITEO = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593,
          3194, 27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]
PEER_OPT = {"sgd": torch.optim.SGD, "rowwise_adagrad": torchrec.optim.RowWiseAdagrad}


def batches(rows, batch, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = []
        for r in rows:  # Zipf-like: a few hot rows, a long tail
            u = torch.rand(batch, generator=g)
            ids.append((r * u.pow(3)).long().clamp_(max=r - 1))
        out.append(KeyedJaggedTensor.from_lengths_sync(
            keys=[f"f{i}" for i in range(len(rows))], values=torch.cat(ids),
            lengths=torch.ones(len(rows) * batch, dtype=torch.long)))
    return out


def step_ms(module, kjt):
    t = time.perf_counter()
    module(kjt).values().sum().backward()
    return (time.perf_counter() - t) * 1e3


def compare(modules, data, rounds=3, warmup=2):
    """Median ms/step of each module. Each round runs every module over the
    whole data in turn (blocks, not step-by-step interleaving, so one
    library's OpenMP pool is not woken between the other's steps), and the
    rounds spread the machine's noise over all modules alike."""
    times = {name: [] for name in modules}
    for _ in range(rounds):
        for name, m in modules.items():
            for kjt in data[:warmup]:
                step_ms(m, kjt)
            times[name] += [step_ms(m, kjt) for kjt in data[warmup:]]
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="cap on rows per table")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    args = ap.parse_args()
    rows = [min(r, args.rows) for r in CRITEO]
    tables = [EmbeddingBagConfig(name=f"t{i}", num_embeddings=r, embedding_dim=args.dim,
                                 feature_names=[f"f{i}"]) for i, r in enumerate(rows)]
    ebc = EmbeddingBagCollection(tables)
    data = batches(rows, args.batch, args.steps + 2)
    print(f"26 tables (rows capped at {args.rows}), dim {args.dim}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads; median ms per forward+backward+update")
    for opt in ("sgd", "rowwise_adagrad"):
        modules = {
            "torchrec+FBGEMM": FusedEmbeddingBagCollection(
                tables, optimizer_type=PEER_OPT[opt], optimizer_kwargs={"lr": 0.01}),
            "ours fp32": itr.FusedEBC.from_ebc(ebc, optimizer=opt, lr=0.01),
            "ours bf16-split": itr.FusedEBC.from_ebc(ebc, optimizer=opt, lr=0.01,
                                                     dtype=torch.bfloat16),
        }
        ms = compare(modules, data)
        peer = ms["torchrec+FBGEMM"]
        for name, t in ms.items():
            ratio = "" if name.startswith("torchrec") else f"   speedup vs peer {peer / t:5.2f}x"
            print(f"{opt:16s} {name:16s} {t:8.2f} ms{ratio}")
        del modules


if __name__ == "__main__":
    main()
