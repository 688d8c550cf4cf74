"""Loads ipex_train._ccl with the shared libraries oneCCL opens at run time.

oneCCL dlopen()s ``libfabric.so.1`` (OFI transport) and, for
``CCL_ATL_TRANSPORT=mpi``, ``libmpi.so.12`` by name. Neither lives on the
default library path: pip's ``mpich`` puts them in ``<venv>/lib/mpich`` and
``<venv>/lib``. Loading them first with RTLD_GLOBAL makes oneCCL's dlopen find
the already-loaded copies by their SONAME, with no LD_LIBRARY_PATH needed.
"""
import ctypes
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


def load():
    """Returns the ipex_train._ccl module, importing it on first use."""
    global _loaded
    if _loaded is None:
        _preload("libfabric.so.1", ["lib/mpich", "lib"])
        if os.environ.get("CCL_ATL_TRANSPORT", "ofi") == "mpi":
            _preload("libmpi.so.12", ["lib"])
        try:
            from .. import _ccl
        except ImportError as e:
            raise ImportError(
                "ipex_train's ccl process group is not built or oneCCL is missing: run "
                "`make setup` (scripts/install.d/20-oneccl-mpi.sh installs oneccl-cpu, "
                f"mpich and mpi4py): {e}") from e
        _loaded = _ccl
    return _loaded
