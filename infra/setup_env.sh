#!/usr/bin/env bash
# Create (or update) the project's virtual environment. Idempotent; `make run` / `make test`
# call it, so a fresh machine needs nothing but Python 3.11.
#
# Order matters: torch 2.13.0 (CPU build) goes in first, then everything else under
# infra/constraints.txt. Installing the project first would let pip resolve a newer CUDA
# torch (several GB of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
CONSTRAINTS=infra/constraints.txt

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; chipmatch needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo ">> installing torch (CPU build) first"
# TORCH_INDEX_URL (e.g. PyTorch's CPU or CUDA wheel index) for machines without a local wheel.
TORCH_INDEX=()
[ -n "${TORCH_INDEX_URL:-}" ] && TORCH_INDEX=(--extra-index-url "$TORCH_INDEX_URL")
"${PIP[@]}" install -q "${TORCH_INDEX[@]}" -c "$CONSTRAINTS" "torch==2.13.0"
echo ">> installing chipmatch, its dependencies and the dev tools (pinned by $CONSTRAINTS)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -e ".[dev]"   # dev: pytest, ruff, mypy

# Real data for the fashion_mnist source and its tests, where the machine allows it.
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST/t10k-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    echo ">> installing Debian's dataset-fashion-mnist (best effort)"
    { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist; } >/dev/null 2>&1 \
        || echo "   (could not install it: the fashion_mnist source and its tests will say so)"
fi
echo ">> environment ready: $VENV"
