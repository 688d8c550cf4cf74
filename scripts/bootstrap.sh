#!/usr/bin/env bash
# Idempotent setup: .venv with the pinned requirements, then the native build.
# Each step leaves a stamp keyed on its inputs, so a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Hash of everything that decides what gets installed.
want=$(for f in requirements.txt scripts/bootstrap.sh scripts/install_extras.sh; do
         if [ -f "$f" ]; then cat "$f"; fi; done | sha256sum | cut -c1-16)
have=$(cat "$VENV/.deps-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[bootstrap] installing pinned Python packages"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements.txt
  if [ -f scripts/install_extras.sh ]; then
    VENV="$VENV" bash scripts/install_extras.sh
  fi
  # editable install of ipex_train itself (console scripts, import path); the
  # native build below is what compiles.
  IPEX_TRAIN_SKIP_NATIVE=1 "$VENV/bin/pip" install -q --disable-pip-version-check \
      --no-build-isolation --no-deps -e .
  echo "$want" > "$VENV/.deps-stamp"
fi
# Native build: incremental (cmake + ninja), a no-op when nothing changed.
"$VENV/bin/python" setup.py -q build_native
