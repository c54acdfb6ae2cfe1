"""Run genbab on shared benchmarks and tally verdicts against ``reference.csv``.

Usage: python benchmarks/run_suite.py BENCH [BENCH...] [--timeout-scale F] [--max-timeout S] [--limit N]
       [--no-bounds] [--out results.csv]
Prints one line per instance and a summary per benchmark: proved (unsat), falsified (sat),
open, *wrong* (disagreeing with the reference consensus), median time of solved instances.
Each instance runs in this process (start-up is paid once); times exclude that start-up.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import genbab
from genbab.api import verify


def instances(folder: Path) -> list[dict]:
    ref = {}
    if (folder / "reference.csv").exists():
        ref = {(r["onnx"], r["vnnlib"]): r["consensus"] for r in csv.DictReader(open(folder / "reference.csv"))}
    rows = []
    for onnx, vnnlib, timeout in csv.reader(open(folder / "instances.csv")):
        rows.append({"onnx": folder / onnx, "vnnlib": folder / vnnlib, "timeout": float(timeout),
                     "expected": ref.get((onnx, vnnlib), "unknown")})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="+")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-timeout", type=float, default=0, help="cap every instance's timeout (seconds)")
    ap.add_argument("--no-bounds", action="store_true")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    root = Path(os.environ.get("GENBAB_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))
    out = []
    wrong_total = 0
    for bench in args.benchmarks:
        rows = instances(root / bench)[: args.limit or None]
        tally, times, models = {"sat": 0, "unsat": 0, "open": 0, "wrong": 0}, [], {}
        for r in rows:
            model = models.get(r["onnx"]) or models.setdefault(r["onnx"], genbab.load_model(r["onnx"]))
            t0 = time.monotonic()
            timeout = r["timeout"] * args.timeout_scale
            timeout = min(timeout, args.max_timeout) if args.max_timeout else timeout
            res = verify(model, r["vnnlib"], timeout=timeout, bounds=not args.no_bounds)
            dt = time.monotonic() - t0
            wrong = res.status in ("sat", "unsat") and r["expected"] in ("sat", "unsat") and res.status != r["expected"]
            tally["wrong"] += wrong
            tally[res.status if res.status in ("sat", "unsat") else "open"] += 1
            if res.status in ("sat", "unsat"):
                times.append(dt)
            print(f"{bench:16s} {r['vnnlib'].name:45s} {res.status:8s} {dt:7.2f}s expected={r['expected']}"
                  f"{'  WRONG' if wrong else ''}", flush=True)
            out.append([bench, r["onnx"].name, r["vnnlib"].name, res.status, f"{dt:.3f}", r["expected"]])
        median = statistics.median(times) if times else float("nan")
        print(f"== {bench}: unsat {tally['unsat']}, sat {tally['sat']}, open {tally['open']}, wrong {tally['wrong']}"
              f" of {len(rows)}; median solved time {median:.2f}s", flush=True)
        wrong_total += tally["wrong"]
    if args.out:
        with open(args.out, "w", newline="") as fh:
            csv.writer(fh).writerows([["benchmark", "onnx", "vnnlib", "result", "time_s", "expected"], *out])
    return 1 if wrong_total else 0


if __name__ == "__main__":
    sys.exit(main())
