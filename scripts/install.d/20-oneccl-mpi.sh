#!/usr/bin/env bash
# oneCCL (CPU build), an MPI (pip MPICH, which also bundles libfabric) and
# mpi4py, for the "ccl" process group and the ipex-train-run launcher: the
# `ccl` extra of pyproject.toml, pinned, plus the oneCCL step that the extra
# cannot do (ipex_train/install_extra.py: oneccl-cpu's metadata asks for
# libfabric>=2.6, which PyPI lacks, so it goes in with --no-deps).
# - libfabric: the copy MPICH bundles in $VENV/lib/mpich/libfabric.so.1; the
#   process group preloads it (see ipex_train/distributed/_lib.py).
# - libccl.so.2, which libccl.so lists as NEEDED but only the big SYCL wheel
#   ships, is replaced by a tiny shim built with the native code
#   (native/ccl/ccl_shim.cpp, see native/ccl/README.md).
# Idempotent: pip leaves already-satisfied pins alone.
set -euo pipefail
: "${VENV:?VENV must point at the virtual environment}"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps mpich==5.0.2 mpi4py==4.1.2
"$VENV/bin/python" ipex_train/install_extra.py ccl --devel -q
for f in bin/mpiexec lib/libmpi.so.12 lib/mpich/libfabric.so.1; do
  [ -e "$VENV/$f" ] || { echo "20-oneccl-mpi.sh: $VENV/$f missing after install" >&2; exit 1; }
done
