#!/usr/bin/env bash
# Creates the project's virtualenv with every dependency pinned (requirements/lock.txt) and installs
# mono2stereo_core in editable mode. torch is pinned to 2.13.0 (a CPU wheel on the CI machine); an unpinned
# torch would pull a multi-GB CUDA build.
set -euo pipefail
PYTHON="${1:-python3}"
VENV="${2:-.venv}"
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
    echo "mono2stereo needs Python >= 3.10 (found $("$PYTHON" --version 2>&1))" >&2
    exit 1
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements/lock.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "virtualenv ready: $VENV"
