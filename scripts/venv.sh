#!/usr/bin/env bash
# Run a command inside the project's virtualenv, creating it first if needed.
#   bash scripts/venv.sh python -m engine.sweep ablation
#   bash scripts/venv.sh pytest
# The venv is (re)built when missing or when pyproject.toml is newer than the last install.
# TORCH_SPEC overrides the torch requirement (default torch==2.13.0, whose CPU wheel these
# machines install from disk; on a CUDA machine use e.g. TORCH_SPEC='torch>=2.4,<=2.14.1').
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ] || [ pyproject.toml -nt "$VENV/.installed" ]; then
  PY="${PYTHON:-}"
  if [ -z "$PY" ]; then
    for cand in python3.11 python3 python; do
      if command -v "$cand" >/dev/null && "$cand" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        PY="$cand"; break
      fi
    done
  fi
  [ -n "$PY" ] || { echo "error: Python >= 3.11 is needed (set PYTHON=/path/to/python3.11)" >&2; exit 2; }
  echo "[venv] creating $VENV with $PY (first run only; a few minutes)" >&2
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  touch "$VENV/.installed"
fi
export PATH="$PWD/$VENV/bin:$PATH"
exec "$@"
