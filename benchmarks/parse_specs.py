"""Parse every shared VNN-LIB property; print file, number of cases, seconds, and the slowest.

Columns: file, cases (or the SpecError), wall seconds, CPU seconds of this process (less
sensitive to other load on the machine).

Usage: python benchmarks/parse_specs.py [--only SUBSTRING] [--limit SECONDS]
Reads ../shared/benchmarks (or $GENBAB_BENCHMARKS). Files that fail with SpecError are listed
with their message. Exit code 1 if any file takes longer than --limit seconds (default 5).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from genbab.errors import SpecError
from genbab.spec.vnnlib import parse_vnnlib_file


def property_files(root: Path) -> list[Path]:
    """Every ``*.vnnlib*`` directly in a benchmark folder or in its ``vnnlib/`` subfolder."""
    out: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        out += folder.glob("*.vnnlib*")
        out += (folder / "vnnlib").glob("*.vnnlib*")
    return sorted(out)


def time_parse(path: Path) -> tuple[str, float, float]:
    """(number of cases or the error, wall seconds, CPU seconds) for one file."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = str(parse_vnnlib_file(path).n_cases)
    except SpecError as err:
        result = f"SpecError: {err}"
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    """Time every property file; exit 1 when the slowest exceeds --limit."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", default="", help="only files whose path contains this")
    ap.add_argument("--limit", type=float, default=5.0, help="seconds allowed per file")
    args = ap.parse_args()
    default = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
    root = Path(os.environ.get("GENBAB_BENCHMARKS", default))
    slowest = (0.0, "")
    for path in property_files(root):
        if args.only not in str(path):
            continue
        cases, seconds, cpu = time_parse(path)
        rel = path.relative_to(root)
        print(f"{rel}\t{cases}\t{seconds:.3f}s\t(cpu {cpu:.3f}s)", flush=True)
        slowest = max(slowest, (seconds, str(rel)))
    print(f"max {slowest[0]:.3f}s ({slowest[1]})")
    return 1 if slowest[0] > args.limit else 0


if __name__ == "__main__":
    sys.exit(main())
