"""Per-rank start-up used by ipex-train-run: pin this rank to its cores, then
exec the user's script in this same process.

    python .../ipex_train/launch/_rank.py script.py args...

Run by path (then ``_cores`` is imported from this directory, sys.path[0])
or as ``python -m ipex_train.launch._rank``. Reads its cores from
IPT_RANK_CORES (see _cores.py) by local rank
(MPI_LOCALRANKID for MPICH / Intel MPI, OMPI_COMM_WORLD_LOCAL_RANK for Open MPI).
"""
import os
import sys

if __package__:
    from ._cores import decode
else:
    from _cores import decode


def local_rank(env):
    for k in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "LOCAL_RANK", "SLURM_LOCALID"):
        if env.get(k, "") != "":
            return int(env[k])
    return 0


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: python _rank.py script.py [args...]")
    spec = os.environ.get("IPT_RANK_CORES")
    if spec:
        omp, ccl = decode(spec, local_rank(os.environ))
        os.sched_setaffinity(0, set(omp) | set(ccl))
        procs = ",".join(map(str, omp))
        os.environ.setdefault("GOMP_CPU_AFFINITY", procs.replace(",", " "))
        os.environ.setdefault("KMP_AFFINITY", f"granularity=fine,explicit,proclist=[{procs}]")
    script = sys.argv[1]
    os.execv(sys.executable, [sys.executable, script] + sys.argv[2:])


if __name__ == "__main__":
    main()
