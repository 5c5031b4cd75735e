#!/usr/bin/env bash
# The Python package's checks (scripts/test.sh runs this): clippy and rustfmt of the
# native module (python/, its own Cargo workspace), then `pip install ./python` into a
# virtual environment with a pinned torch from PyPI, then the pytest suite
# (python/tests: real 2, 3 and 4 rank jobs, each with a deadline).
#
# The environment is cached under ${OXCCL_PY_CACHE:-~/.cache/oxccl}, keyed by the Python
# version and the pinned versions: the torch wheel pulls ~3 GB of CUDA wheels, so the
# first run downloads for a few minutes; later runs reuse it. Costs on 2 cores once the
# cache is there: the release build of the module (~1-2 min) and the tests (~3-4 min).
#
#   scripts/python-test.sh            # everything
#   scripts/python-test.sh -k ddp     # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.14.1
NUMPY_VERSION=2.4.6
PYTEST_VERSION=9.2.0
MATURIN_VERSION=1.16.0

PY=${PYTHON:-python3}
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -m venv --help >/dev/null 2>&1; then
  printf '\nSKIPPED: the Python package tests: no %s with the venv module\n' "$PY" >&2
  exit 0
fi
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
CACHE=${OXCCL_PY_CACHE:-$HOME/.cache/oxccl}
VENV=$CACHE/venv-py$pyver-torch$TORCH_VERSION-numpy$NUMPY_VERSION-pytest$PYTEST_VERSION-maturin$MATURIN_VERSION
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, numpy, pytest' 2>/dev/null; then
  echo "=== creating $VENV (torch $TORCH_VERSION from PyPI: a large download the first time)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" "numpy==$NUMPY_VERSION" "pytest==$PYTEST_VERSION" "maturin==$MATURIN_VERSION"
fi

echo "=== python/: cargo fmt --check and clippy (warnings are errors)"
(cd python && cargo fmt -- --check && PYO3_PYTHON=$VENV/bin/python cargo clippy --release -- -D warnings)

export PATH=$VENV/bin:$PATH
echo "=== pip install ./python (the native module's release build)"
# --no-build-isolation: build with the venv's pinned maturin instead of fetching one.
"$VENV/bin/pip" install -q --no-build-isolation --force-reinstall --no-deps ./python

echo "=== pytest python/tests"
# Run from the tests folder so that the installed package, not python/oxccl, is imported.
cd python/tests
"$VENV/bin/python" -m pytest -q -rs "$@"
