"""Fixtures for tests across simulated hosts (see _hosts.py)."""
import os

import pytest

from tests.multihost import _hosts


def _in_ci():
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture
def cluster(tmp_path):
    """Two simulated hosts, node0 and node1, removed after the test. In CI
    (CI=1, which .ci/run sets) a machine that cannot make them fails the
    test; elsewhere the test is skipped with the reason."""
    why = _hosts.unavailable()
    if why:
        msg = f"simulated hosts unavailable: {why}"
        if _in_ci():
            pytest.fail(msg + " (CI needs them: run as root with iproute2 installed)")
        pytest.skip(msg)
    with _hosts.Cluster(2, tmp_path / "cluster") as c:
        yield c
