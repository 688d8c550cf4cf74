"""Train DLRM: ``ipex-train-run --nproc-per-node 2 examples/dlrm/train.py [flags]``.

Runs as one process (no launcher) or as one rank of a launched job. Prints a
progress bar (samples/s, loss), periodic AUC, and a summary line per metric.
See ``--help`` for the flags and README.md's DLRM section.
"""
import contextlib
import json
import math
import os
import sys
import time

if __package__ in (None, ""):  # run as a script: make `dlrm` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "dlrm"

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from . import checkpoint  # noqa: E402
from .config import ConfigError, parse_args  # noqa: E402
from .data import BadLine, CriteoTSV, SyntheticCriteo  # noqa: E402
from .parallel import init_distributed  # noqa: E402
from .trainer import Trainer, default_threads  # noqa: E402


class Diverged(RuntimeError):
    """The training loss stopped being finite (raised on every rank at one step)."""


def make_data(cfg):
    """(training source, evaluation batches) for cfg.data."""
    rows = cfg.table_sizes()
    bags = cfg.bag_sizes()
    if cfg.data == "synthetic":
        src = SyntheticCriteo(rows, cfg.batch_size, seed=cfg.seed, zipf=cfg.zipf, bag_sizes=bags)
        return src, src.eval_batches(cfg.eval_batches)
    src = CriteoTSV(cfg.train_file, rows, cfg.batch_size, bad_lines=cfg.bad_lines, bag_sizes=bags)
    ev = CriteoTSV(cfg.eval_file or cfg.train_file, rows, cfg.batch_size,
                   bad_lines=cfg.bad_lines, report=lambda msg: None, bag_sizes=bags)
    return src, ev.eval_batches(cfg.eval_batches)


def resume(cfg, trainer, log):
    """The step to start at: the checkpoint's with --resume (restored), else 0."""
    if not cfg.resume:
        if cfg.checkpoint_dir and trainer.rank == 0:
            with contextlib.suppress(checkpoint.CheckpointError):
                held = checkpoint.read_latest(cfg.checkpoint_dir)
                if held is not None:
                    log(f"[dlrm] {cfg.checkpoint_dir} holds a checkpoint (step {held}) but "
                        f"--resume is not set: starting at step 0 (step {held} is kept)")
        return 0
    start = checkpoint.load(trainer, cfg.checkpoint_dir)
    if not start:
        log(f"[dlrm] --resume: no checkpoint in {cfg.checkpoint_dir} yet, starting at step 0")
        return 0
    if cfg.steps <= start:
        raise ConfigError(f"--steps {cfg.steps} is not beyond the checkpoint's step {start} "
                          f"in {cfg.checkpoint_dir}: nothing to train (raise --steps)")
    for flag, saved, now in trainer.lr_changes:
        log(f"[dlrm] {flag} {now} replaces the checkpoint's {saved}")
    return start


def _progress(cfg, rank, start, total):
    if rank != 0 or not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total * cfg.batch_size, initial=start * cfg.batch_size, unit="samples",
                unit_scale=True, dynamic_ncols=True, file=sys.stderr)


def run(cfg):
    """Trains per `cfg` on this process's rank; returns the metrics dict (every rank)."""
    rank, world = init_distributed(cfg.backend, cfg.timeout)
    cfg.check(world)
    torch.set_num_threads(cfg.threads or default_threads())
    # Subnormals (tiny gradients of rarely seen rows) take x86's slow microcode path.
    torch.set_flush_denormal(True)
    trainer = Trainer(cfg, rank, world)
    source, eval_set = make_data(cfg)
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    start = resume(cfg, trainer, log)
    log(f"[dlrm] world size {world}, model {cfg.model}{' multi-hot' if cfg.multi_hot else ''}, "
        f"dtype {cfg.dtype}, embeddings {cfg.embeddings} "
        f"({cfg.emb_optimizer}), ISA {__import__('ipex_train').isa()}, "
        f"{torch.get_num_threads()} threads/rank, tables on this rank: {trainer.placement[rank]}"
        + (f", resumed at step {start}" if start else ""))
    metrics = dict(world_size=world, losses={}, evals=[])
    bar = _progress(cfg, rank, start, cfg.steps)
    pending, pending_steps, samples = [], [], 0
    t_start = time.perf_counter()
    t0, timed_from = t_start, None
    batches = source.train_batches(start)
    step, last_step = start, start
    while step < cfg.steps:
        step += 1
        batch = next(batches)
        trainer.set_step(step)
        pending.append(trainer.train_step(batch))
        pending_steps.append((step, batch.labels.shape[0]))
        if timed_from is None and step - start >= min(3, cfg.steps - start):
            t0, timed_from, samples = time.perf_counter(), step, 0  # skip warm-up steps
        elif timed_from is not None:
            samples += batch.labels.shape[0]
        if step % cfg.log_every == 0 or step == cfg.steps:
            # One reduction per log interval: the steps' loss sums and a stop vote
            # (any rank past --max-seconds), so every rank stops at the same step.
            late = cfg.max_seconds and time.perf_counter() - t_start > cfg.max_seconds
            sums = trainer.global_sum(torch.stack(pending + [torch.tensor(float(late))]))
            for (s, n), v in zip(pending_steps, sums.tolist()):
                metrics["losses"][s] = v / n
            bad = [s for s, _ in pending_steps if not math.isfinite(metrics["losses"][s])]
            if bad:  # the same sums on every rank: every rank stops here
                if bar is not None:
                    bar.close()
                raise Diverged(f"the training loss is {metrics['losses'][bad[0]]} at step "
                               f"{bad[0]}: the model diverged; lower --lr ({cfg.lr}) or "
                               f"--emb-lr ({cfg.emb_lr}), or lengthen --lr-warmup-steps")
            if bar is not None:
                bar.update(sum(n for _, n in pending_steps))
                bar.set_postfix(loss=f"{metrics['losses'][step]:.4f}")
            pending, pending_steps, last_step = [], [], step
            if sums[-1] > 0:
                log_msg = f"[dlrm] --max-seconds {cfg.max_seconds} reached: stopping at step {step}"
                (bar.write(log_msg) if bar is not None else log(log_msg))
                break
        if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            auc, loss = trainer.evaluate(eval_set)
            metrics["evals"].append(dict(step=step, auc=auc, loss=loss))
            msg = f"[dlrm] step {step}: eval AUC {auc:.4f}, eval loss {loss:.4f}"
            (bar.write(msg) if bar is not None else log(msg))
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            checkpoint.save(trainer, step, cfg.checkpoint_dir, cfg.keep_checkpoints, log)
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    auc, loss = trainer.evaluate(eval_set)
    metrics["evals"].append(dict(step=last_step, auc=auc, loss=loss))
    metrics["throughput"] = samples / elapsed if samples else float("nan")
    last = metrics["losses"].get(last_step, float("nan"))
    log(f"[dlrm] throughput: {metrics['throughput']:.0f} samples/s (global, {world} ranks)")
    log(f"[dlrm] final train loss: {last:.4f}")
    log(f"[dlrm] eval AUC: {auc:.4f}, eval loss: {loss:.4f} after {last_step} steps")
    if rank == 0 and cfg.metrics_out:
        with open(cfg.metrics_out, "w") as f:
            json.dump(metrics, f)
    return metrics


def main(argv=None):
    cfg = parse_args(argv)
    try:
        cfg.check()
        run(cfg)
    except (ConfigError, BadLine, checkpoint.CheckpointError) as e:  # raised on every rank
        print(f"dlrm: error: {e}", file=sys.stderr)
        return 2
    except Diverged as e:  # raised on every rank
        print(f"dlrm: error: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
