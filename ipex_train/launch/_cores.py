"""Splitting a node's cores between its ranks and their oneCCL workers.

With C cores, N ranks and K ccl workers per rank, rank i gets the i-th block
of C // N cores: the last K of the block run oneCCL's workers, the others
OpenMP. Oversubscribed (N * (K + 1) > C, allowed with --oversubscribe), ranks
share cores round-robin with one OpenMP thread each.

    cores 0..7, N=2, K=1:   rank 0: omp 0,1,2  ccl 3 | rank 1: omp 4,5,6  ccl 7
"""
import dataclasses


class UsageError(Exception):
    """A bad command line; printed without a traceback."""


@dataclasses.dataclass
class Plan:
    compute: list      # per local rank: cores for OpenMP threads
    workers: list      # per local rank: cores for oneCCL workers (may be empty)
    oversubscribed: bool

    @property
    def threads(self):
        return len(self.compute[0])

    def worker_cores_all(self):
        return [c for w in self.workers for c in w]

    def encode(self):
        """'omp/ccl;omp/ccl;...' with comma-separated core lists: IPT_RANK_CORES."""
        return ";".join(",".join(map(str, c)) + "/" + ",".join(map(str, w))
                        for c, w in zip(self.compute, self.workers))

    def describe(self):
        yield f"{len(self.compute)} ranks per node, {self.threads} OpenMP threads each" + (
            " (oversubscribed)" if self.oversubscribed else "")
        for i, (c, w) in enumerate(zip(self.compute, self.workers)):
            yield f"local rank {i}: omp cores {c}" + (f", ccl worker cores {w}" if w else "")


def decode(text, local_rank):
    """(compute cores, worker cores) of `local_rank` from an IPT_RANK_CORES value."""
    parts = text.split(";")
    if not 0 <= local_rank < len(parts):
        raise ValueError(f"local rank {local_rank} not in IPT_RANK_CORES ({len(parts)} ranks)")
    omp, _, ccl = parts[local_rank].partition("/")
    as_list = lambda s: [int(x) for x in s.split(",") if x]
    return as_list(omp), as_list(ccl)


def plan_cores(cores, nproc, workers, oversubscribe):
    cores = list(cores)
    need = nproc * (workers + 1)
    if need > len(cores):
        if not oversubscribe:
            raise UsageError(
                f"{nproc} ranks x ({workers} ccl workers + 1) need {need} cores but this node "
                f"has {len(cores)} available; use fewer ranks or pass --oversubscribe")
        compute = [[cores[i % len(cores)]] for i in range(nproc)]
        wk = [[cores[(nproc + i * workers + j) % len(cores)] for j in range(workers)]
              for i in range(nproc)]
        return Plan(compute, wk, True)
    per = len(cores) // nproc
    compute, wk = [], []
    for i in range(nproc):
        block = cores[i * per:(i + 1) * per]
        compute.append(block[:per - workers])
        wk.append(block[per - workers:] if workers else [])
    return Plan(compute, wk, False)
