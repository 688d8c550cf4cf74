"""Timing shared by the benchmarks: on a shared, noisy machine every variant
runs once per round, in a rotating order, so a slow phase slows all of them
alike; minima (and medians) over the rounds are reported."""
import statistics
import time


def interleaved(fns, rounds, warmup=3):
    """fns: {name: fn(round)}. Calls every fn once per round, the order
    rotating by one each round. Returns {name: (min s, median s)} over the
    rounds after `warmup`."""
    names = list(fns)
    ts = {n: [] for n in names}
    for r in range(warmup + rounds):
        for k in range(len(names)):
            n = names[(r + k) % len(names)]
            t0 = time.perf_counter()
            fns[n](r)
            if r >= warmup:
                ts[n].append(time.perf_counter() - t0)
    return {n: (min(v), statistics.median(v)) for n, v in ts.items()}


def best(fn, rounds, warmup=1):
    """Minimum seconds of fn() over `rounds` calls, after `warmup` calls."""
    return interleaved({"fn": lambda r: fn()}, rounds, warmup)["fn"][0]
