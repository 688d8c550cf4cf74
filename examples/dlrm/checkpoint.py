"""Checkpoints of the DLRM job: ``<dir>/step_<N>/rank<r>.pt`` per rank and
``<dir>/latest`` naming the newest complete step.

A checkpoint appears only once complete, and nothing a checkpoint relies on
is ever rewritten in place:

* every rank writes its file into ``step_<N>.partial`` under a temporary
  name, fsyncs it and renames it; rank 0 then renames the directory to
  ``step_<N>`` and replaces ``latest`` the same way (written, fsynced, renamed);
* the step ``latest`` names is never written again (a re-run without
  ``--resume`` skips that save), and pruning (``--keep-checkpoints``) never
  deletes it;
* a missing, torn or foreign file is reported by name (CheckpointError), on
  every rank, instead of a raw unpickling error.

The directory must be shared by all ranks (one file system).
"""
import contextlib
import os
import re
import shutil

import torch
import torch.distributed as dist


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or resumed from; the message names the file."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, write):
    """Calls write(binary file) on a temporary file beside `path`, fsyncs it and
    renames it to `path` (then fsyncs the directory): `path` is old or new, never torn."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path) or ".")


def read_latest(directory):
    """The step `<directory>/latest` names, or None when there is no such file."""
    path = os.path.join(directory, "latest")
    try:
        with open(path, "rb") as f:
            text = f.read(64).decode("ascii", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e})") from None
    if not re.fullmatch(r"[0-9]{1,18}\n?", text):
        raise CheckpointError(f"{path} is corrupt: expected a step number, got {text[:32]!r}; "
                              "write the step of a complete step_<N> directory into it, or "
                              "remove it to start over")
    return int(text)


def steps_on_disk(directory):
    """Steps of the complete step_<N> directories, ascending."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(m[1]) for m in map(re.compile(r"step_([0-9]+)").fullmatch, names) if m)


def _from_rank0(trainer, value):
    """Rank 0's `value` (a bool or small int) on every rank."""
    if trainer.world == 1:
        return value
    t = torch.tensor([float(value) if trainer.rank == 0 else 0.0], dtype=torch.float64)
    return type(value)(trainer.global_sum(t).item())


def _barrier(trainer):
    if trainer.world > 1:
        dist.barrier(group=trainer.group)


def save(trainer, step, directory, keep, log):
    """Writes this rank's part of checkpoint `step` (collective: every rank calls it)."""
    latest = None
    if trainer.rank == 0:
        os.makedirs(directory, exist_ok=True)
        with contextlib.suppress(CheckpointError):  # a corrupt `latest` is replaced below
            latest = read_latest(directory)
    if _from_rank0(trainer, latest == step):
        log(f"[dlrm] step {step}: not saving: {directory}/latest names step {step} (an earlier "
            "run's checkpoint), which is never overwritten")
        return
    final = os.path.join(directory, f"step_{step}")
    partial = final + ".partial"
    if trainer.rank == 0:  # a killed save's leftovers
        shutil.rmtree(partial, ignore_errors=True)
    _barrier(trainer)
    os.makedirs(partial, exist_ok=True)
    state = trainer.state_dict()
    state["step"] = step
    write_atomic(os.path.join(partial, f"rank{trainer.rank}.pt"), lambda f: torch.save(state, f))
    _barrier(trainer)
    if trainer.rank == 0:
        if os.path.exists(final):  # an earlier run's, and not the one `latest` names
            shutil.rmtree(final)
        os.rename(partial, final)
        _fsync_dir(directory)
        write_atomic(os.path.join(directory, "latest"), lambda f: f.write(f"{step}\n".encode()))
        prune(directory, keep, step)


def prune(directory, keep, latest):
    """Deletes all but the `keep` newest steps up to `latest` (0: deletes nothing).
    Steps above `latest` belong to some other run and stay."""
    if keep <= 0:
        return
    older = [s for s in steps_on_disk(directory) if s <= latest]
    for s in older[:-keep]:
        shutil.rmtree(os.path.join(directory, f"step_{s}"), ignore_errors=True)


def _load_own(trainer, directory):
    latest = read_latest(directory)
    if latest is None:
        return 0
    step_dir = os.path.join(directory, f"step_{latest}")
    if not os.path.isdir(step_dir):
        raise CheckpointError(f"{directory}/latest names step {latest}, but {step_dir} does not "
                              "exist; write the step of a complete step_<N> directory into "
                              "`latest`, or remove it to start over")
    path = os.path.join(step_dir, f"rank{trainer.rank}.pt")
    if not os.path.exists(path):
        ranks = [n for n in os.listdir(step_dir) if re.fullmatch(r"rank[0-9]+\.pt", n)]
        raise CheckpointError(f"{path} does not exist: {step_dir} holds {len(ranks)} rank "
                              f"file(s), this run has {trainer.world} ranks (resume with the "
                              "world size that wrote it)")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # torn, truncated or not a torch file: name it, whatever the error
        raise CheckpointError(f"{path} is unreadable (torn or truncated?): "
                              f"{type(e).__name__}: {str(e)[:200]}") from None
    if not isinstance(state, dict) or state.get("step") != latest:
        raise CheckpointError(f"{path} is not the DLRM checkpoint of step {latest}")
    trainer.load_state_dict(state, path)
    return latest


def load(trainer, directory):
    """Restores the checkpoint `latest` names (collective); returns its step, 0
    when there is none. Raises CheckpointError on every rank if any rank fails."""
    err, step = None, 0
    try:
        step = _load_own(trainer, directory)
    except CheckpointError as e:
        err = e
    if trainer.world > 1:
        failed = torch.zeros(trainer.world, dtype=torch.float64)
        failed[trainer.rank] = err is not None
        bad = trainer.global_sum(failed).nonzero().flatten().tolist()
        if bad and err is None:
            err = CheckpointError(f"rank(s) {bad} could not load their part of the checkpoint "
                                  f"in {directory} (see their error)")
    if err is not None:
        raise err
    return step
