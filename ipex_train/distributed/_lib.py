"""Loads ipex_train._ccl with the shared libraries oneCCL opens at run time.

_ccl.so needs oneCCL's libccl.so.1 (oneccl-cpu, in <env>/lib: no fixed
place relative to the module, installed or in a checkout), which needs our
libccl.so.2 shim (beside the module). Both are loaded by full path, shim
first, so every NEEDED entry then matches an already-loaded SONAME.
oneCCL also dlopen()s ``libfabric.so.1`` (OFI transport) and, for
``CCL_ATL_TRANSPORT=mpi``, ``libmpi.so.12`` by name. Neither lives on the
default library path: pip's ``mpich`` puts them in ``<venv>/lib/mpich`` and
``<venv>/lib``. Loading them first with RTLD_GLOBAL makes oneCCL's dlopen find
the already-loaded copies by their SONAME, with no LD_LIBRARY_PATH needed.
"""
import ctypes
import json
import os
import sys

_loaded = None


def _candidates(name, subdirs):
    roots = [sys.prefix]
    for var in ("FI_ROOT", "I_MPI_ROOT", "MPI_ROOT"):
        if os.environ.get(var):
            roots.insert(0, os.environ[var])
    for root in roots:
        for sub in subdirs:
            p = os.path.join(root, sub, name)
            if os.path.exists(p):
                yield p


def _preload(name, subdirs):
    for path in _candidates(name, subdirs):
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return path
        except OSError:
            continue
    return None


_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_status():
    """What the build said about the ccl part ("built", or why it was skipped)."""
    try:
        with open(os.path.join(_PKG, "_build.json")) as f:
            return json.load(f)["ccl"]
    except (OSError, ValueError, KeyError):
        return "unknown (no _build.json)"


def load():
    """Returns the ipex_train._ccl module, importing it on first use."""
    global _loaded
    if _loaded is None:
        status = _build_status()
        if status != "built" and not os.path.exists(os.path.join(_PKG, "_ccl.so")):
            raise ImportError(
                f"ipex_train was built without its ccl process group ({status}). Install "
                "oneCCL with `python -m ipex_train.install_extra ccl --devel` (or "
                "`python ipex_train/install_extra.py ccl --devel` in a checkout), then rebuild "
                "with IPEX_TRAIN_CCL=on (README: Install)")
        _preload("libfabric.so.1", ["lib/mpich", "lib"])
        if os.environ.get("CCL_ATL_TRANSPORT", "ofi") == "mpi":
            _preload("libmpi.so.12", ["lib"])
        try:
            ctypes.CDLL(os.path.join(_PKG, "libccl.so.2"), mode=ctypes.RTLD_GLOBAL)
        except OSError as e:
            raise ImportError(f"ipex_train's libccl.so.2 shim failed to load: {e}") from e
        if _preload("libccl.so.1", ["lib"]) is None:
            raise ImportError(
                f"oneCCL's libccl.so.1 not found under {sys.prefix}/lib: "
                "`python -m ipex_train.install_extra ccl` installs it (oneccl-cpu)")
        try:
            from .. import _ccl
        except ImportError as e:
            raise ImportError(f"ipex_train's ccl process group failed to load: {e}") from e
        _loaded = _ccl
    return _loaded
