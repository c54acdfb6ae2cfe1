#!/usr/bin/env bash
# VNN-COMP: run one instance.
# Usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Runs `genbab verify ONNX VNNLIB --results-file RESULTS_FILE --timeout T` with the category's
# settings from vnncomp/categories.toml ($GENBAB_CATEGORIES overrides the path; T = TIMEOUT less
# the category's margin). Always leaves a results file: `timeout` when the verifier had to be
# killed, `error` when it crashed or the settings could not be read.
set -uo pipefail
VERSION_STRING=v1
if [[ $# -ne 6 ]]; then
    echo "usage: $0 $VERSION_STRING CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
if [[ "$1" != "$VERSION_STRING" ]]; then
    echo "$0: expected version '$VERSION_STRING', got '$1'" >&2
    exit 1
fi
CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS_FILE="$5"; TIMEOUT="$6"
if ! [[ "$TIMEOUT" =~ ^[0-9]+([.][0-9]+)?$ ]] || [[ "$TIMEOUT" =~ ^0+([.]0+)?$ ]]; then
    echo "$0: TIMEOUT must be a positive number of seconds, got '$TIMEOUT'" >&2
    echo "error" > "$RESULTS_FILE"
    exit 1
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
CATEGORIES="${GENBAB_CATEGORIES:-$ROOT/vnncomp/categories.toml}"
rm -f -- "$RESULTS_FILE"

fail() {  # fail MESSAGE: report, leave `error` in the results file, exit 0
    echo "$0: $1" >&2
    echo "error" > "$RESULTS_FILE"
    exit 0
}

[[ -x "$PY" ]] || fail "no $PY: run vnncomp/install_tool.sh $VERSION_STRING first"
# Kill limit on the first line, then the `genbab verify` flags, one per line.
SETTINGS="$("$PY" "$ROOT/genbab/bench/categories.py" "$CATEGORIES" "$CATEGORY" "$TIMEOUT")" \
    || fail "cannot read the settings of category '$CATEGORY' (timeout '$TIMEOUT')"
mapfile -t LINES <<< "$SETTINGS"
KILL_AFTER="${LINES[0]}"
ARGS=("${LINES[@]:1}")

echo "genbab: category '$CATEGORY', timeout ${TIMEOUT}s, flags: ${ARGS[*]}"
timeout --kill-after=5 "$KILL_AFTER" "$PY" -m genbab.cli verify "$ONNX" "$VNNLIB" \
    --results-file "$RESULTS_FILE" "${ARGS[@]}"
RC=$?
if [[ ! -s "$RESULTS_FILE" ]]; then
    if [[ $RC -eq 124 || $RC -eq 137 ]]; then
        echo "timeout" > "$RESULTS_FILE"
    else
        echo "genbab exited with code $RC and wrote no result" >&2
        echo "error" > "$RESULTS_FILE"
    fi
fi
exit 0
