#!/usr/bin/env bash
# Idempotent setup: .venv with the pinned requirements, then ipex_train itself
# installed editable from pyproject.toml (which builds the native code in place).
# The install step leaves a stamp keyed on its inputs, so a second run only
# runs the incremental native build (a no-op when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
# the development setup always has the ccl process group: a missing oneCCL fails loudly
export IPEX_TRAIN_CCL=${IPEX_TRAIN_CCL:-on}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Hash of everything that decides what gets installed.
# Extra installers (oneCCL, MPI, TorchRec, ...) live one per file in
# scripts/install.d/, run in name order with VENV set.
want=$(cat requirements.txt pyproject.toml setup.py ipex_train/install_extra.py \
       scripts/bootstrap.sh scripts/install.d/*.sh 2>/dev/null | sha256sum | cut -c1-16) || true
have=$(cat "$VENV/.deps-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[bootstrap] installing pinned Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  for f in scripts/install.d/*.sh; do
    [ -e "$f" ] || continue
    echo "[bootstrap] $f"
    VENV="$VENV" bash "$f"
  done
  # ipex_train the way a developer installs it: editable, against this venv's
  # torch (no build isolation), dependencies already pinned above
  echo "[bootstrap] pip install -e . (native build in build/inplace)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
  echo "$want" > "$VENV/.deps-stamp"
fi
# Native build: incremental (cmake + ninja), a no-op when nothing changed.
"$VENV/bin/python" setup.py -q build_native
