#!/usr/bin/env bash
# FBGEMM's CPU build, the peer that benchmarks/embedding.py measures against
# (SplitTableBatchedEmbeddingBagsCodegen with fused EXACT_SGD and
# EXACT_ROWWISE_ADAGRAD on CPU). Pinned: fbgemm-gpu-cpu 1.8.0 is the release
# built for torch 2.13 (1.9.0 targets torch 2.14 and fails to import).
# Its only hard runtime needs are torch and numpy, both pinned already, so it
# is installed with --no-deps and the torch constraint: nothing can move torch.
set -euo pipefail
VENV=${VENV:-.venv}
if "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('fbgemm-gpu-cpu') == '1.8.0'" 2>/dev/null; then
  exit 0
fi
cons=$(mktemp)
trap 'rm -f "$cons"' EXIT
echo "torch==2.13.0" > "$cons"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps -c "$cons" fbgemm-gpu-cpu==1.8.0
