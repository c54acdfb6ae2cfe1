#!/usr/bin/env bash
# VNN-COMP: prepare one instance. Usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# No analysis of the property: translates the model once into genbab's graph cache (`genbab
# prepare`, so that run_instance.sh never imports onnx or onnx2torch) and warms the page cache.
# Exits 0 unless the arguments are wrong (a model that cannot be read is reported by the run).
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
    timeout 300 "$ROOT/.venv/bin/python" -m genbab.cli prepare "$ONNX" || true
    timeout 60 "$ROOT/.venv/bin/python" -c 'import genbab.api, genbab.cli' > /dev/null 2>&1 || true
fi
exit 0
