"""TorchRec and FBGEMM's CPU build are importable (`make setup` installs both)."""
import importlib


def test_torchrec_and_fbgemm_import():
    for name in ("torchrec", "fbgemm_gpu"):
        try:
            importlib.import_module(name)
        except ImportError as e:  # collect-time import errors would hide which one
            raise AssertionError(f"{name} is not importable ({e}): install the `torchrec` "
                                 "extra, or deselect these tests with -m 'not torchrec'") from e
