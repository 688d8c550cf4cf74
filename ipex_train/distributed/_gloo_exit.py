"""Exit step for processes with gloo groups: interpreter finalization starts
only once gloo's worker threads have let go of the ops they finished.

A gloo worker thread drops its reference to an op it completed (and so to
the op's tensors) only after the waiting thread was woken. When the main
thread gets from that wake-up to interpreter finalization before the worker
runs again (a loaded machine), and the tensor's Python object was freed
meanwhile (the C++ tensor then owns it), the worker's drop asks for the GIL.
A thread asking for the GIL while Python finalizes is ended by pthread_exit,
whose unwinding through the op's noexcept destructor calls std::terminate:
the rank dies with SIGABRT, "terminate called without an active exception"
(torch 2.13). destroy_process_group does not stop gloo's threads, and
freeing the group (which joins them) cannot be relied on: torch itself keeps
the default group referenced, e.g. from torch.distributed.nn.functional's
default arguments once DDP imported it after init_process_group. So at exit
(atexit, registered when ipex_train.distributed is imported) gloo's worker
threads are waited for, with the GIL released, until each sleeps: an idle
gloo worker waits on its queue, one still holding a finished op is runnable.
Nothing here touches ccl groups (see _exit_without_teardown).
"""
import os
import time

_TASKS = "/proc/self/task"
SETTLE_S = 0.002  # a thread counts as asleep when it slept through this pause
LIMIT_S = 2.0     # the longest the exit step waits
WORKER_NAME = "pt_gloo_runloop"  # torch 2.13 names gloo's workers so once they run

_tracked = set()  # thread ids (str) started while init_from_env made a gloo group


def threads():
    """This process's thread ids (str); empty without /proc."""
    try:
        return set(os.listdir(_TASKS))
    except OSError:
        return set()


def _comm(tid):
    try:
        with open(f"{_TASKS}/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def track(before):
    """Notes the threads started since `before` (a threads() result): the
    exit step also waits for those still carrying the main thread's name,
    gloo's workers in a torch that does not name them. Returns them."""
    new = threads() - before
    _tracked.update(new)
    return new


def workers():
    """Thread ids of gloo's workers: every thread named WORKER_NAME, and the
    tracked threads still named as the main thread. gloo's transport and the
    store name their threads, which wake on timers and never hold ops."""
    unnamed = _comm(str(os.getpid()))
    named = {t for t in threads() if _comm(t) == WORKER_NAME}
    return named | {t for t in _tracked if _comm(t) == unnamed}


def _sample(tid):
    """(state, context switches) of thread `tid`; None once it is gone."""
    try:
        with open(f"{_TASKS}/{tid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"{_TASKS}/{tid}/status") as f:
            switches = sum(int(line.split()[1]) for line in f
                           if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")))
    except (OSError, IndexError, ValueError):
        return None
    return state, switches


def settle(limit=LIMIT_S):
    """Waits until every gloo worker slept through a SETTLE_S pause (state S,
    context switches unchanged; the GIL is free during the pause, so a worker
    waiting for it would run), at most `limit` s. True when they did."""
    deadline = time.monotonic() + limit
    while True:
        ids = workers()
        if not ids:
            return True
        first = {t: _sample(t) for t in ids}
        time.sleep(SETTLE_S)
        second = {t: _sample(t) for t in ids}
        _tracked.difference_update(t for t, s in second.items() if s is None)
        if all(s is None or (s == first[t] and s[0] == "S") for t, s in second.items()):
            return True
        if time.monotonic() > deadline:
            return False
