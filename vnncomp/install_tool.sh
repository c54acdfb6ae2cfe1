#!/usr/bin/env bash
# VNN-COMP: install genbab. Usage: install_tool.sh v1
# Creates .venv in the repository root and installs genbab into it (`make install`: pip install -e).
set -euo pipefail
VERSION_STRING=v1
if [[ $# -ne 1 ]]; then
    echo "usage: $0 $VERSION_STRING" >&2
    exit 1
fi
if [[ "$1" != "$VERSION_STRING" ]]; then
    echo "$0: expected version '$VERSION_STRING', got '$1'" >&2
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "$0: genbab needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if command -v make >/dev/null 2>&1; then
    make install PYTHON="$PYTHON"
else  # the same steps as the Makefile's install target
    "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch .venv/.installed
fi
.venv/bin/genbab --version
