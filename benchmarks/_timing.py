"""Timing shared by the benchmarks: on a shared, noisy machine every variant
runs once per round, in a rotating order, so a slow phase slows all of them
alike; minima (and medians) over the rounds are reported."""
import statistics
import time


def interleaved(fns, rounds, warmup=3, clock=time.perf_counter):
    """fns: {name: fn(round)}. Calls every fn once per round, the order
    rotating by one each round. Returns {name: (min s, median s)} over the
    rounds after `warmup`. `clock`: wall time by default; time.process_time
    counts only this process's CPU seconds (all its threads), which other
    processes' load on a shared machine inflates far less."""
    names = list(fns)
    ts = {n: [] for n in names}
    for r in range(warmup + rounds):
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            t0 = clock()
            fns[n](r)
            if r >= warmup:
                ts[n].append(clock() - t0)
    return {n: (min(v), statistics.median(v)) for n, v in ts.items()}


def best(fn, rounds, warmup=1):
    """Minimum seconds of fn() over `rounds` calls, after `warmup` calls."""
    return interleaved({"fn": lambda r: fn()}, rounds, warmup)["fn"][0]
