"""benchmarks/torchrec_dmp.py's launcher: ranks whose output outgrows a pipe.

Its launcher once read the ranks' pipes one rank at a time; with --profile's
tables rank 1 filled its pipe and blocked in write() while rank 0 waited for
it in a collective (a hang over ccl and gloo alike). Tiny sizes, gloo only:
this checks the launcher, not the timings.
"""
import os
import sys

import pytest

from tests._procs import ROOT, run

pytestmark = [pytest.mark.torchrec, pytest.mark.multiproc]


def test_profile_output_larger_than_a_pipe_finishes():
    r = run([sys.executable, os.path.join(ROOT, "benchmarks", "torchrec_dmp.py"), "--only", "gloo",
             "--profile", "200", "--rows", "300", "--batch", "16", "--steps", "1",
             "--rounds", "1", "--timeout", "200"], 240, merge=True)
    assert r.returncode == 0, r.stdout[-4000:]
    # each rank printed more than a pipe holds (64 KiB) before the launcher read it
    assert r.stdout.count("PROFILE rank 1") == 8 and len(r.stdout) > 2 * 65536, len(r.stdout)
    assert "row_wise   gloo ours" in r.stdout, r.stdout[-3000:]
