"""Sharded training step: DistributedModelParallel with ipex_train's sharder vs FBGEMM's.

One question: at 2 ranks on 127.0.0.1, how long does one DMP training step
(KJT all-to-all, lookup, pooled all-to-all / reduce-scatter, dense forward
and backward, the tables' fused update) take when the shards run on our
kernels (ipex_train.torchrec.sharders()) against TorchRec's default sharder
(FBGEMM's fused CPU kernel, the peer), same model, same optimizer, same run?
Table-wise and row-wise, over "ccl" and over gloo. TorchRec's sharder does
not list row-wise for CPU; its FBGEMM kernel runs it, so the peer's sharder
here adds it.

The model is benchmarks/torchrec_ebc.py's: 26 Criteo-shaped tables (rows
capped by --rows), dim 64, one Zipf-skewed id per feature, --batch samples
per rank, then a Linear to one logit. Prints median ms per step (rank 0;
every rank runs in lockstep), wall and the main thread's CPU time, and the
ratios; then, per rank, the CPU time of its embedding kernels alone (every
lookup module, FBGEMM's or ours, forward + backward-with-update on the
inputs one DMP step gave it): the embedding-only share of the step, the
rest being TorchRec's distribution, the dense head, DDP and autograd, the
same code on both sides.

    python benchmarks/torchrec_dmp.py [--rows 100000] [--batch 1024] [--steps 10]
        [--only ccl|gloo] [--profile N]   # N: torch.profiler's top ops per rank

--profile's tables are wall time (waits and other sessions' load included).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _fbgemm_sharder_class():
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder

    class FbgemmSharder(EmbeddingBagCollectionSharder):
        """TorchRec's default sharder; its CPU list lacks row-wise, which its
        FBGEMM kernel runs fine on CPU, so row-wise is added for the peer rows."""

        def sharding_types(self, compute_device_type):
            return super().sharding_types(compute_device_type) + ["row_wise"]

    return FbgemmSharder


def build(kind, sharding, opt, args, world):
    """A DMP of the benchmark model sharded by `kind` ("ours", "ours bf16", "fbgemm")."""
    import torch
    import torch.distributed as dist
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torch import nn
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints

    import ipex_train.torchrec as itr
    from torchrec_ebc import CRITEO

    rows = [min(r, args.rows) for r in CRITEO]
    tables = [EmbeddingBagConfig(name=f"t{i}", num_embeddings=r, embedding_dim=args.dim,
                                 feature_names=[f"f{i}"]) for i, r in enumerate(rows)]

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.ebc = EmbeddingBagCollection(tables, device=torch.device("meta"))
            self.lin = nn.Linear(len(rows) * args.dim, 1)

        def forward(self, kjt):
            return self.lin(self.ebc(kjt).values()).squeeze(1)

    torch.manual_seed(0)
    model = Model()
    _FbgemmSharder = _fbgemm_sharder_class()
    if kind == "fbgemm":
        fbgemm_opt = {"sgd": EmbOptimType.EXACT_SGD,
                      "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD}[opt]
        sharders = [_FbgemmSharder(
            fused_params={"optimizer": fbgemm_opt, "learning_rate": 0.01})]
    else:
        sharders = itr.sharders(optimizer=opt, lr=0.01,
                                dtype=torch.bfloat16 if "bf16" in kind else torch.float32)
    constraints = {t.name: ParameterConstraints(sharding_types=[sharding],
                                                compute_kernels=["fused"]) for t in tables}
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world, compute_device="cpu"),
                                       constraints=constraints)
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=torch.device("cpu"), plan=plan,
                                   sharders=sharders)
    dense = torch.optim.SGD([p for n, p in dmp.named_parameters()
                             if not hasattr(p, "_in_backward_optimizers")], lr=0.01)
    return dmp, dense


def worker(args):
    """One rank: builds every configuration, then times them in rounds."""
    import torch
    import torch.distributed as dist
    from torch import nn

    from torchrec_ebc import CRITEO, batches

    if args.backend == "ccl":
        import ipex_train.distributed  # noqa: F401  (registers "ccl")
    torch.set_num_threads(args.threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(args.backend, rank=rank, world_size=world)
    rows = [min(r, args.rows) for r in CRITEO]
    data = batches(rows, args.batch, args.steps + 2, seed=rank)
    labels = torch.randint(0, 2, (args.batch,), generator=torch.Generator().manual_seed(rank))
    runs = {}
    for sharding in args.shardings:
        for kind in args.kinds:
            runs[(sharding, kind)] = build(kind, sharding, args.optimizer, args, world)

    def step(dmp, dense, kjt):
        t, c = time.perf_counter(), time.thread_time()
        loss = nn.functional.binary_cross_entropy_with_logits(dmp(kjt), labels.float())
        dense.zero_grad()
        loss.backward()
        dense.step()
        return (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3

    times = {key: [] for key in runs}
    for _ in range(args.rounds):  # blocks per configuration, rounds spread the noise
        for key, (dmp, dense) in runs.items():
            dist.barrier()
            for kjt in data[:2]:
                step(dmp, dense, kjt)
            times[key] += [step(dmp, dense, kjt) for kjt in data[2:]]
    med = {f"{s}|{k}": [sorted(x[i] for x in t)[len(t) // 2] for i in (0, 1)]
           for (s, k), t in times.items()}
    kernels = kernel_times(runs, data, step, args.profile)
    if args.profile:
        profile(runs, data, step, rank, args.profile)
    if rank == 0:
        print("RESULT " + json.dumps(med), flush=True)
    print(f"KERNELS rank {rank} " + json.dumps(kernels), flush=True)
    dist.barrier()
    dist.destroy_process_group()


def kernel_times(runs, data, step, top=0, reps=10):
    """{sharding|kind: [fwd, fwd+bwd]} median CPU ms of the rank's embedding
    kernels alone (every group's lookup module, FBGEMM's or ours) on the
    inputs one DMP step handed them: the embedding-only part of a step."""
    import torch
    out = {}
    for (s, k), (dmp, dense) in runs.items():
        mods = [m for lookup in dmp.module.ebc._lookups for m in lookup._emb_modules]
        seen = {}
        hooks = [m.register_forward_pre_hook(
            lambda mod, a, i=i: seen.__setitem__(i, a[0])) for i, m in enumerate(mods)]
        step(dmp, dense, data[2])
        for h in hooks:
            h.remove()
        fwd, both = [], []
        for _ in range(reps):
            c = time.thread_time()
            outs = [m(seen[i]) for i, m in enumerate(mods)]
            f = time.thread_time()
            torch.autograd.backward(outs, [torch.full_like(o, 1e-3) for o in outs])
            e = time.thread_time()
            fwd.append((f - c) * 1e3)
            both.append((e - c) * 1e3)
        out[f"{s}|{k}"] = [sorted(fwd)[reps // 2], sorted(both)[reps // 2]]
        if top:
            from torch.profiler import profile as prof
            with prof() as p:
                for _ in range(reps):
                    outs = [m(seen[i]) for i, m in enumerate(mods)]
                    torch.autograd.backward(outs, [torch.full_like(o, 1e-3) for o in outs])
            table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
            print(f"PROFILE rank {torch.distributed.get_rank()} {s} {k} kernels alone "
                  f"({reps} fwd+bwd)\n{table}", flush=True)
    return out


def profile(runs, data, step, rank, top):
    """torch.profiler over one block of steps per configuration: each rank
    prints its `top` ops by self CPU time (one run, so the rows compare)."""
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile as prof
    for (s, k), (dmp, dense) in runs.items():
        dist.barrier()
        with prof(activities=[ProfilerActivity.CPU]) as p:
            for kjt in data[2:]:
                step(dmp, dense, kjt)
        table = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        print(f"PROFILE rank {rank} {s} {k} ({len(data) - 2} steps)\n{table}", flush=True)


def launch(args, backend, kinds, shardings, world=2):
    """Runs `world` ranks of this script; returns rank 0's {sharding|kind: ms}."""
    from ipex_train.launch._ports import free_port
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
               WORLD_SIZE=str(world), OMP_NUM_THREADS=str(args.threads),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, __file__, "--worker", "--backend", backend, "--kinds", *kinds,
           "--shardings", *shardings, "--rows", str(args.rows), "--batch", str(args.batch),
           "--dim", str(args.dim), "--steps", str(args.steps), "--rounds", str(args.rounds),
           "--optimizer", args.optimizer, "--threads", str(args.threads),
           "--profile", str(args.profile)]
    # each rank writes to a file: a pipe read one rank at a time filled up
    # (--profile's tables), blocking that rank in write() while the other
    # waited for it in a collective
    files = [tempfile.TemporaryFile("w+") for _ in range(world)]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=f, stderr=subprocess.STDOUT, text=True)
             for r, f in enumerate(files)]
    deadline = time.monotonic() + args.timeout
    try:
        for p in procs:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        sys.exit(f"{backend}: the ranks ran past --timeout {args.timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for f in files:
        f.seek(0)
        outs.append(f.read())
        f.close()
    for p, out in zip(procs, outs):
        if p.returncode != 0:
            sys.exit(f"a {backend} rank failed:\n{out[-4000:]}")
    if args.profile:
        for out in outs:
            print(out[out.find("PROFILE"):])
    line = next(l for l in outs[0].splitlines() if l.startswith("RESULT "))
    res = json.loads(line[len("RESULT "):])
    for r, out in enumerate(outs):  # "kernels|sharding|kind": [fwd, fwd+bwd] per rank
        line = next(l for l in out.splitlines() if l.startswith(f"KERNELS rank {r} "))
        for key, v in json.loads(line.split(" ", 3)[3]).items():
            res.setdefault("kernels|" + key, []).append(v)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000, help="cap on rows per table")
    ap.add_argument("--batch", type=int, default=1024, help="samples per rank")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--optimizer", default="sgd", choices=["sgd", "rowwise_adagrad"])
    ap.add_argument("--threads", type=int, default=1, help="threads per rank")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    ap.add_argument("--profile", type=int, default=0,
                    help="print each rank's top N ops by self CPU time (torch.profiler)")
    ap.add_argument("--only", choices=["ccl", "gloo"], help="run one backend only")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--backend", default="ccl", help=argparse.SUPPRESS)
    ap.add_argument("--kinds", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--shardings", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    shardings = ["table_wise", "row_wise"]
    kinds = {"ccl": ("ours", "ours bf16"), "gloo": ("ours",)}
    if args.only:
        kinds = {args.only: kinds[args.only]}
    res = {b: launch(args, b, ["fbgemm", *k], shardings) for b, k in kinds.items()}
    print(f"2 ranks x {args.threads} thread(s) on 127.0.0.1, 26 tables (rows capped at "
          f"{args.rows}), dim {args.dim}, batch {args.batch} per rank, {args.optimizer}; "
          "median ms per DMP training step")
    print("(wall: the step; cpu: the rank's main thread, i.e. its compute without the "
          "waits on its peer)")
    for s in shardings:
        for backend, ks in kinds.items():
            peer = res[backend][f"{s}|fbgemm"]
            print(f"{s:10s} {backend:4s} torchrec+FBGEMM   wall {peer[0]:8.2f} ms  cpu "
                  f"{peer[1]:8.2f} ms")
            for kind in ks:
                t = res[backend][f"{s}|{kind}"]
                print(f"{s:10s} {backend:4s} {kind:17s} wall {t[0]:8.2f} ms  cpu {t[1]:8.2f} ms"
                      f"   speedup vs peer: wall {peer[0] / t[0]:5.2f}x, cpu "
                      f"{peer[1] / t[1]:5.2f}x")
            kern = {k: res[backend][f"kernels|{s}|{k}"] for k in ("fbgemm", *ks)}
            for kind, per_rank in kern.items():
                both = [v[1] for v in per_rank]
                print(f"{'':15s} {kind:17s} embedding kernels alone, cpu fwd+bwd per rank: "
                      + ", ".join(f"{b:6.2f}" for b in both) + " ms (fwd "
                      + ", ".join(f"{v[0]:5.2f}" for v in per_rank) + ")"
                      + ("" if kind == "fbgemm" else "   vs peer: " + ", ".join(
                          f"{p[1] / v[1]:4.2f}x" for p, v in zip(kern["fbgemm"], per_rank))))
        if len(res) == 2:
            print(f"{s:10s} ours: gloo / ccl wall "
                  f"{res['gloo'][f'{s}|ours'][0] / res['ccl'][f'{s}|ours'][0]:5.2f}x")


if __name__ == "__main__":
    main()
