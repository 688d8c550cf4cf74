#!/usr/bin/env bash
# oneCCL (CPU build), an MPI (pip MPICH, which also bundles libfabric) and
# mpi4py, for the "ccl" process group and the ipex-train-run launcher.
#
# - oneccl-cpu / oneccl-cpu-devel: runtime libccl.so and headers. Installed
#   with --no-deps: their metadata asks for libfabric>=2.6, which PyPI lacks.
#   (The oneccl / oneccl-devel packages without "-cpu" are a SYCL build that
#   crashes on communicator creation on CPU-only machines: not used.)
# - libfabric: the copy MPICH bundles in $VENV/lib/mpich/libfabric.so.1; the
#   process group preloads it (see ipex_train/distributed/_lib.py).
# - libccl.so.2, which libccl.so lists as NEEDED but only the big SYCL wheel
#   ships, is replaced by a tiny shim built with the native code
#   (native/ccl/ccl_shim.c, see native/ccl/README.md).
# Idempotent: pip leaves already-satisfied pins alone.
set -euo pipefail
: "${VENV:?VENV must point at the virtual environment}"
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check --no-deps)
"${PIP[@]}" oneccl-cpu==2022.2.0 oneccl-cpu-devel==2022.2.0 mpich==5.0.2 mpi4py==4.1.2
for f in lib/libccl.so include/oneapi/ccl.hpp bin/mpiexec lib/libmpi.so.12 lib/mpich/libfabric.so.1; do
  [ -e "$VENV/$f" ] || { echo "20-oneccl-mpi.sh: $VENV/$f missing after install" >&2; exit 1; }
done
# A build directory configured before oneCCL (or native/ccl) existed skips
# native/ccl: make the next build re-run CMake's configure step.
[ -e CMakeLists.txt ] && touch CMakeLists.txt
