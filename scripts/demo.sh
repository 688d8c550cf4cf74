#!/usr/bin/env bash
# The main job (run by `make demo` after setup): DLRM on the built-in synthetic
# Criteo-like data, 2 ranks (tables model-parallel, MLPs data-parallel), bf16
# split training, bounded to a few minutes on 2 cores. Prints throughput, the
# final training loss and the evaluation AUC.
# Extra flags are passed to examples/dlrm/train.py (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
ARGS=(--steps 300 --eval-every 100 --max-seconds 150 --eval-batches 8
      --embedding-dim 32 --bottom-mlp 256-64-32 --top-mlp 256-128-1 "$@")
# Ranks on loopback only; oneCCL over OFI/TCP on lo.
export CCL_ATL_TRANSPORT=${CCL_ATL_TRANSPORT:-ofi} FI_PROVIDER=${FI_PROVIDER:-tcp}
export FI_TCP_IFACE=${FI_TCP_IFACE:-lo} CCL_KVS_IFACE=${CCL_KVS_IFACE:-lo}
export CCL_WORKER_OFFLOAD=${CCL_WORKER_OFFLOAD:-0}
exec .venv/bin/ipex-train-run --nproc-per-node 2 examples/dlrm/train.py "${ARGS[@]}"
