"""Every test here is marked `torchrec`. Without TorchRec installed only
test_installed.py is collected, and it fails naming what is missing: deselect
the area with -m "not torchrec" rather than have it skip unnoticed."""
import importlib.util

import pytest

MISSING = [m for m in ("torchrec", "fbgemm_gpu") if importlib.util.find_spec(m) is None]
collect_ignore_glob = ["test_[!i]*.py", "dmp_worker.py"] if MISSING else ["dmp_worker.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/torchrec/" in item.nodeid:
            item.add_marker(pytest.mark.torchrec)
