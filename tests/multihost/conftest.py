"""Fixtures for tests across simulated hosts (see _hosts.py)."""
import pytest

from tests.multihost import _hosts


@pytest.fixture
def cluster(request, tmp_path):
    """Two simulated hosts, node0 and node1 (or as many as an indirect
    parameter says: node0, node1, ...), removed after the test
    (_hosts.require: a failure in CI where they cannot be made, else a skip)."""
    _hosts.require()
    with _hosts.Cluster(getattr(request, "param", 2), tmp_path / "cluster") as c:
        yield c
