"""Checkpoints of the DLRM example: atomic saves that survive a SIGKILL, clear
messages for every broken state, pruning, and what --steps/--lr mean on --resume."""
import os
import sys

import pytest
import torch

from tests._procs import run
from tests.dlrm._run import (TRAIN, main_inprocess, run_inprocess, run_ranks, run_ranks_raw,
                             tiny_args)

# one process; SIGKILLs itself half-way through its first checkpoint file
KILL_MID_SAVE = r"""
import io, os, signal, sys
import torch
real_save = torch.save

def torn_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    data = buf.getvalue()
    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    out.write(data[:len(data) // 2])
    out.flush()
    os.fsync(out.fileno())
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = torn_save
train = sys.argv.pop(1)
sys.path.insert(0, os.path.dirname(os.path.dirname(train)))
from dlrm.train import main
sys.exit(main(sys.argv[1:]))
"""


def _losses(m, steps):
    return [m["losses"][s] for s in steps]


def test_sigkill_while_saving_keeps_the_latest_checkpoint(tmp_path):
    """A re-run without --resume killed inside a save (a scheduler's re-launch):
    `latest` still names an intact checkpoint and --resume continues exactly."""
    ck = str(tmp_path / "ck")
    whole = run_inprocess(steps=6)
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=ck)
    p = run([sys.executable, "-c", KILL_MID_SAVE, TRAIN] +
            tiny_args(steps=6, checkpoint_every=3, checkpoint_dir=ck), timeout=300)
    assert p.returncode == -9, p.stdout + p.stderr  # killed in the save, as intended
    assert open(os.path.join(ck, "latest")).read().strip() == "3"
    assert not os.path.exists(os.path.join(ck, "step_6"))  # the torn save never became one
    resumed = run_inprocess(steps=6, resume=True, checkpoint_every=3, checkpoint_dir=ck)
    assert _losses(resumed, [4, 5, 6]) == _losses(whole, [4, 5, 6])
    assert open(os.path.join(ck, "latest")).read().strip() == "6"
    assert sorted(os.listdir(ck)) == ["latest", "step_3", "step_6"]  # the partial was replaced


def test_rerun_never_overwrites_the_step_latest_names(tmp_path, capsys):
    ck = tmp_path / "ck"
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=str(ck))
    before = (ck / "step_3" / "rank0.pt").read_bytes()
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=str(ck), seed=7)
    assert (ck / "step_3" / "rank0.pt").read_bytes() == before
    out = capsys.readouterr().out
    assert "holds a checkpoint (step 3) but --resume is not set" in out
    assert "step 3: not saving" in out and "never overwritten" in out


def _resume_error(ck, capsys, **kw):
    assert main_inprocess(steps=kw.pop("steps", 6), resume=True, checkpoint_dir=str(ck), **kw) == 2
    return capsys.readouterr().err


def test_torn_checkpoint_file_is_named(tmp_path, capsys):
    ck = tmp_path / "ck"
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=str(ck))
    f = ck / "step_3" / "rank0.pt"
    f.write_bytes(f.read_bytes()[:1000])
    err = _resume_error(ck, capsys)
    assert f"dlrm: error: {f} is unreadable (torn or truncated?)" in err, err
    f.write_bytes(b"")
    assert f"{f} is unreadable" in _resume_error(ck, capsys)
    f.unlink()
    err = _resume_error(ck, capsys)
    assert f"{f} does not exist: {ck / 'step_3'} holds 0 rank file(s), this run has 1" in err, err


def test_latest_naming_a_missing_step_or_corrupt(tmp_path, capsys):
    ck = tmp_path / "ck"
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=str(ck))
    (ck / "latest").write_text("5\n")
    err = _resume_error(ck, capsys)
    assert f"latest names step 5, but {ck / 'step_5'} does not exist" in err, err
    assert "world size" not in err
    for bad in ("", "3x", "garbage\n", "-3"):
        (ck / "latest").write_text(bad)
        err = _resume_error(ck, capsys)
        assert f"{ck / 'latest'} is corrupt: expected a step number, got {bad!r}" in err, err


def test_steps_at_or_below_the_checkpoint_are_refused(tmp_path, capsys):
    ck = tmp_path / "ck"
    run_inprocess(steps=4, checkpoint_every=4, checkpoint_dir=str(ck))
    for steps in (4, 2):
        err = _resume_error(ck, capsys, steps=steps)
        assert f"--steps {steps} is not beyond the checkpoint's step 4" in err, err
    assert "nan" not in capsys.readouterr().out


def test_learning_rates_on_resume_are_the_flags(tmp_path, capsys):
    """Both --lr and --emb-lr given on --resume take effect (and the log says
    so); the tables' lr is saved with the checkpoint."""
    ck = str(tmp_path / "ck")
    run_inprocess(steps=3, checkpoint_every=3, checkpoint_dir=ck, lr=0.1, emb_lr=0.05)
    assert torch.load(os.path.join(ck, "step_3", "rank0.pt"), weights_only=True)["emb_lr"] == 0.05
    same = run_inprocess(steps=6, resume=True, checkpoint_dir=ck, lr=0.1, emb_lr=0.05)
    capsys.readouterr()
    lr = run_inprocess(steps=6, resume=True, checkpoint_dir=ck, lr=0.4, emb_lr=0.05)
    assert "--lr 0.4 replaces the checkpoint's 0.1" in capsys.readouterr().out
    emb = run_inprocess(steps=6, resume=True, checkpoint_dir=ck, lr=0.1, emb_lr=0.3)
    assert "--emb-lr 0.3 replaces the checkpoint's 0.05" in capsys.readouterr().out
    assert lr["losses"][4] == same["losses"][4] == emb["losses"][4]  # before any new update
    assert lr["losses"][6] != same["losses"][6] and emb["losses"][6] != same["losses"][6]


def test_keep_checkpoints(tmp_path):
    from dlrm.config import parse_args

    assert parse_args([]).keep_checkpoints == 2
    ck = tmp_path / "ck"
    run_inprocess(steps=5, checkpoint_every=1, checkpoint_dir=str(ck))
    assert sorted(os.listdir(ck)) == ["latest", "step_4", "step_5"]
    run_inprocess(steps=8, checkpoint_every=1, checkpoint_dir=str(ck), resume=True,
                  keep_checkpoints=1)
    assert sorted(os.listdir(ck)) == ["latest", "step_8"]
    every = tmp_path / "every"
    run_inprocess(steps=3, checkpoint_every=1, checkpoint_dir=str(every), keep_checkpoints=0)
    assert sorted(os.listdir(every)) == ["latest", "step_1", "step_2", "step_3"]


@pytest.mark.multiproc
def test_two_ranks_save_resume_and_refuse_together(tmp_path):
    """The collective parts: 2 ranks (gloo) save and resume exactly; when one
    rank's file is torn, every rank exits with status 2 instead of hanging."""
    ck = tmp_path / "ck"
    whole = run_ranks(2, tmp_path, steps=4)
    run_ranks(2, tmp_path, steps=2, checkpoint_every=2, checkpoint_dir=str(ck))
    assert sorted(os.listdir(ck / "step_2")) == ["rank0.pt", "rank1.pt"]
    resumed = run_ranks(2, tmp_path, steps=4, resume=True, checkpoint_dir=str(ck))
    assert [resumed["losses"][s] for s in "34"] == [whole["losses"][s] for s in "34"]
    torn = ck / "step_2" / "rank1.pt"
    torn.write_bytes(torn.read_bytes()[:500])
    r0, r1 = run_ranks_raw(2, timeout=240, steps=4, resume=True, checkpoint_dir=str(ck))
    assert (r0.returncode, r1.returncode) == (2, 2), r0.stdout[-2000:] + r1.stdout[-2000:]
    assert f"dlrm: error: {torn} is unreadable" in r1.stdout, r1.stdout[-2000:]
    assert "rank(s) [1] could not load their part of the checkpoint" in r0.stdout, r0.stdout
