#!/usr/bin/env bash
# The project's own copy of ../shared/tools/device-carry.sh, extended with what the engine now
# imports. Packs what the lent GPU machine lacks into ./.carry (git-ignored), small enough for
# the device tool's 64 MiB limit (working tree ~13 MB + this ~40 MB):
#   stack.tar.xz  Ray 2.60 without its Java jars, RLlib, Serve, LLM and dashboard web build, and
#                 bitsandbytes with only its CUDA 13.0 and CPU libraries (~25 MB xz)
#   *.whl         the small wheels, pinned to the versions in ./.venv where it has them (the
#                 versions the tests ran with): pydantic (+core), captum, optuna (+alembic,
#                 sqlalchemy, colorlog, mako), fvcore (+iopath, yacs, termcolor), Ray's
#                 jsonschema/tensorboardX, and datasets (+dill, multiprocess) for HF corpora
#   minilm/       config.json + tokenizer files of the embedded teacher (all-MiniLM-L6-v2), not
#                 its 87 MB of weights: bench/gpu_check.py builds a randomly initialised teacher
#                 of that shape from them, so nothing needs a download there
# The image already has torch, transformers, numpy, pandas, pyarrow, scipy, matplotlib, pyyaml,
# safetensors, hypothesis, pytest, nvidia-ml-py (KINDS.md). Python 3.12 / x86-64, as there.
# Takes ~2 min the first time (cached in ~/.cache/device-carry). bench/gpu_check.sh unpacks it;
# by hand, at the start of a device `run` with carry [".carry"]:
#   mkdir -p /tmp/site && tar xJf .carry/stack.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/*.whl && export PYTHONPATH=/tmp/site:$PWD RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1;
set -euo pipefail
RAY=${RAY_VERSION:-2.60.0} BNB=${BNB_VERSION:-0.50.2}
top=$(git rev-parse --show-toplevel); cd "$top"
ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
grep -qx '/.carry/' "$ex" 2>/dev/null || echo '/.carry/' >> "$ex"
venv_py=$top/.venv/bin/python
[ -x "$venv_py" ] || venv_py=
# name==version as installed in .venv, else the bare name (pip takes the newest)
pin() {
  local v=
  [ -n "$venv_py" ] && v=$("$venv_py" -c "from importlib.metadata import version; print(version('$1'))" 2>/dev/null || true)
  if [ -n "$v" ]; then echo "$1==$v"; else echo "$1"; fi
}
WHEELS=(jsonschema referencing rpds-py jsonschema-specifications tensorboardX pydantic pydantic-core
  annotated-types typing-inspection captum optuna alembic sqlalchemy colorlog mako iopath yacs
  termcolor datasets dill multiprocess)
pins=(); for w in "${WHEELS[@]}"; do pins+=("$(pin "$w")"); done
key=$(printf '%s\n' "ray$RAY" "bnb$BNB" "${pins[@]}" "$(pin fvcore)" | sha256sum | cut -c1-12)
base=$HOME/.cache/device-carry; stack=$base/ray$RAY-bnb$BNB; cache=$base/project-$key
mkdir -p "$stack" "$cache"
plat=(--python-version 3.12 --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform any)
dl() { python3 -m pip download -q --no-deps --only-binary=:all: "${plat[@]}" -d "$1" "${@:2}" 2>&1 | grep -v '^WARNING' || true; }
if [ ! -f "$stack/stack.tar.xz" ]; then  # same recipe and cache as the shared script
  tmp=$(mktemp -d); dl "$tmp/w" "ray==$RAY" "bitsandbytes==$BNB"
  mkdir "$tmp/t"; for w in "$tmp"/w/*.whl; do (cd "$tmp/t" && unzip -q -o "$w"); done
  rm -rf "$tmp/t/ray/jars" "$tmp/t/ray/rllib" "$tmp/t/ray/llm" "$tmp/t/ray/serve" "$tmp/t/ray/dashboard/client/build"
  find "$tmp/t/bitsandbytes" -name 'libbitsandbytes_*.so' ! -name '*cuda130*' ! -name '*cpu*' -delete
  (cd "$tmp/t" && tar cf - . | xz -9 -T0 > "$stack/stack.tar.xz"); rm -rf "$tmp"
fi
# a wheel's file name is its name with '-' as '_', then '-' and the version
have() { ls "$cache" | tr 'A-Z' 'a-z' | grep -q "^$(echo "${1%%==*}" | tr 'A-Z-' 'a-z_')-"; }
if [ ! -f "$cache/wheels.ok" ]; then
  # one pip call per package (one unknown version must not sink the rest); pure-Python
  # packages published only as sdists (fvcore, iopath 0.1.10) are built into wheels here
  for p in "${pins[@]}" "$(pin fvcore)"; do
    have "$p" || dl "$cache" "$p"
    have "$p" || python3 -m pip wheel -q --no-deps -w "$cache" "$p" 2>&1 | grep -v '^WARNING' || true
    have "$p" || { echo "device-carry: no wheel for $p" >&2; exit 1; }
  done
  touch "$cache/wheels.ok"
fi
rm -rf .carry; mkdir -p .carry/minilm; cp "$stack/stack.tar.xz" "$cache"/*.whl .carry/
if [ -n "$venv_py" ]; then  # the embedded teacher's shape and tokenizer, without its weights
  src=$("$venv_py" -c "from engine.models import embedded_model_path; print(embedded_model_path())")
  for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
    cp "$src/$f" .carry/minilm/
  done
fi
printf '%s\n' "ray==$RAY" "bitsandbytes==$BNB" "${pins[@]}" "$(pin fvcore)" > .carry/MANIFEST
du -sh .carry
