"""Run genbab on every shared instance whose reference verdict is ``sat``; print time and verdict.

Usage: python benchmarks/falsify_known_sat.py [--timeout-scale F] [--only SUBSTRING]
Reads ../shared/benchmarks (or $GENBAB_BENCHMARKS). Exit code 1 if any instance is not solved.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import genbab


def known_sat(root: Path) -> list[tuple[str, Path, Path, float]]:
    rows = []
    for folder in sorted(p for p in root.iterdir() if (p / "reference.csv").exists()):
        timeouts = {(a, b): float(t) for a, b, t in csv.reader(open(folder / "instances.csv"))}
        for r in csv.DictReader(open(folder / "reference.csv")):
            if r["consensus"] == "sat":
                rows.append((folder.name, folder / r["onnx"], folder / r["vnnlib"], timeouts[(r["onnx"], r["vnnlib"])]))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    root = Path(os.environ.get("GENBAB_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))
    failures = 0
    for bench, onnx, vnnlib, timeout in known_sat(root):
        if args.only not in str(vnnlib):
            continue
        t0 = time.monotonic()
        result = genbab.verify(onnx, vnnlib, timeout=timeout * args.timeout_scale)
        failures += result.status != "sat"
        print(f"{bench:18s} {onnx.name:34s} {vnnlib.name:40s} {result.status:8s} {time.monotonic() - t0:7.2f}s "
              f"margin={result.stats['attack']['best_margin']:.4g}", flush=True)
    print(f"unsolved: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
