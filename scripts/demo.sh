#!/usr/bin/env bash
# The main job on its built-in default (run by `make demo` after setup).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python examples/quickstart.py
