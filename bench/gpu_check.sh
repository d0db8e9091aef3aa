#!/usr/bin/env bash
# The prepared GPU check in one command (see bench/gpu_check.py for the steps).
#
# On the lent GPU machine (Python, torch and CUDA only), after `bash scripts/device-carry.sh`
# here, one device `run` with carry [".carry"] and timeout_s 600:
#   bash bench/gpu_check.sh            # installs .carry into /tmp/site, then ≤ 8 min of steps;
#                                      # summary.json / summary.md / gpu_check.log into $OUT
# On CPU (CI; the venv already has everything, so nothing is installed):
#   bash bench/gpu_check.sh --dry-run --out /tmp/gpu-dry
# Other flags go to bench/gpu_check.py: --out DIR, --budget-s S, --steps a,b.
set -uo pipefail
cd "$(dirname "$0")/.."
export GPU_CHECK_T0=${GPU_CHECK_T0:-$(date +%s.%N)}
dry=0
for a in "$@"; do [ "$a" = --dry-run ] && dry=1; done
if [ "$dry" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}; [ -x "$PY" ] || PY=$(command -v python3)
  export GPU_CHECK_INSTALL="skipped (dry run: the venv has everything)"
else
  PY=${PYTHON:-python3}
  site=${GPU_CHECK_SITE:-/tmp/site}
  t=$(date +%s.%N)
  if [ ! -f .carry/stack.tar.xz ]; then
    export GPU_CHECK_INSTALL="failed: no .carry here (run scripts/device-carry.sh, carry [\".carry\"])"
  elif mkdir -p "$site" && tar xJf .carry/stack.tar.xz -C "$site" \
      && "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .carry/*.whl; then
    export GPU_CHECK_INSTALL="ok: $(wc -l < .carry/MANIFEST 2>/dev/null || echo '?') packages into $site"
  else
    export GPU_CHECK_INSTALL="failed: unpacking .carry into $site (see the output above)"
  fi
  GPU_CHECK_INSTALL_S=$("$PY" -c "import time; print(round(time.time() - $t, 1))"); export GPU_CHECK_INSTALL_S
  echo "[gpu_check] install: $GPU_CHECK_INSTALL (${GPU_CHECK_INSTALL_S} s)"
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py --python "$PY" "$@"
