"""Loads the native op library (ipex_train/_C.so) once."""
import os

import torch

_LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_C.so")
_loaded = False


def load():
    global _loaded
    if _loaded:
        return
    if not os.path.exists(_LIB):
        raise ImportError(
            f"ipex_train's native library is missing ({_LIB}). Build it with "
            "`make setup` (or `python setup.py build_native`) from the repository root."
        )
    torch.ops.load_library(_LIB)
    _loaded = True
