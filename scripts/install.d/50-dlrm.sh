#!/usr/bin/env bash
# DLRM example's extra packages: tqdm (progress bar) and scikit-learn (AUC).
# Pinned, and constrained so nothing can upgrade torch. Idempotent (pip skips
# what is already installed at these versions).
set -euo pipefail
VENV=${VENV:-.venv}
cons=$(mktemp)
trap 'rm -f "$cons"' EXIT
echo "torch==2.13.0" > "$cons"
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$cons" \
    tqdm==4.70.1 scikit-learn==1.9.1
