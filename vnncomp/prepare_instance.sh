#!/usr/bin/env bash
# VNN-COMP: prepare one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# No analysis of the instance: only warms caches (reads the files, imports genbab so that the
# next start-up finds its libraries in the page cache). Always quick; exits 0 unless the
# arguments are wrong.
set -uo pipefail
VERSION_STRING=v1
if [[ $# -ne 4 ]]; then
    echo "usage: $0 $VERSION_STRING CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
if [[ "$1" != "$VERSION_STRING" ]]; then
    echo "$0: expected version '$VERSION_STRING', got '$1'" >&2
    exit 1
fi
CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
echo "preparing genbab for category '$CATEGORY': $ONNX $VNNLIB"
cat -- "$ONNX" "$VNNLIB" > /dev/null 2>&1 || true
if [[ -x "$ROOT/.venv/bin/python" ]]; then
    timeout 60 "$ROOT/.venv/bin/python" -c 'import genbab.api, genbab.cli' > /dev/null 2>&1 || true
fi
exit 0
