#!/usr/bin/env bash
# TorchRec 1.8.0 for ipex_train.torchrec and the TorchRec comparisons: the
# `torchrec` extra of pyproject.toml, pinned, then ipex_train/install_extra.py
# for torchrec itself (and the check that it loads).
#
# torchrec's metadata asks for `fbgemm-gpu` (the ~500 MB CUDA build), which
# ships the same `fbgemm_gpu` module as the CPU-only `fbgemm-gpu-cpu`. So
# torchrec and fbgemm-gpu-cpu go in with --no-deps, and torchrec's real
# run-time needs are listed here, pinned. fbgemm-gpu-cpu must stay at 1.8.0:
# 1.9.0 is built against torch 2.14 and fails to import on 2.13. Every pip
# call carries a torch==2.13.0 constraint, and requirements.txt's pins as
# constraints too, so nothing here can move torch or numpy.
# Idempotent: pip leaves already-satisfied pins alone; the import check at the
# end fails the bootstrap loudly if the set does not work together.
set -euo pipefail
VENV=${VENV:-.venv}
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==2.13.0" > "$constraints"
grep -E '^[A-Za-z0-9_.-]+==' "$(dirname "$0")/../../requirements.txt" >> "$constraints"

installed() {  # true when every pin below is already in the venv
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as m
pins = {"torchrec": "1.8.0", "fbgemm-gpu-cpu": "1.8.0", "tensordict": "0.15.3",
        "torchmetrics": "1.0.3", "tqdm": "4.70.1", "pyre-extensions": "0.0.32"}
assert all(m.version(k) == v for k, v in pins.items())
PY
}
if ! installed; then
  # torchrec's direct needs, then what they pull in, all pinned
  "${PIP[@]}" -c "$constraints" \
      tensordict==0.15.3 torchmetrics==1.0.3 tqdm==4.70.1 pyre-extensions==0.0.32 \
      cloudpickle==3.1.3 pyvers==0.2.3 lightning-utilities==0.15.3 packaging==26.4 \
      typing-inspect==0.9.0 mypy_extensions==1.2.0
  "${PIP[@]}" -c "$constraints" --no-deps fbgemm-gpu-cpu==1.8.0
fi
# torchrec --no-deps (a no-op when present), then an import check that fails loudly
"$VENV/bin/python" ipex_train/install_extra.py torchrec -q
