"""Run genbab on shared benchmarks and tally verdicts against ``reference.csv``.

Usage: python benchmarks/run_suite.py BENCH [BENCH...] [--timeout-scale F] [--max-timeout S] [--limit N]
       [--spread] [--no-bounds] [--no-bab] [--branching bbps|babsr] [--branching-points opt|uniform]
       [--match SUBSTR] [--out results.csv] [--table table.md]
Prints one line per instance and a summary per benchmark: proved (unsat), falsified (sat),
open, *wrong* (disagreeing with the reference consensus), median time of solved instances.
Each instance runs in this process (start-up is paid once); times exclude that start-up and
model loading (each model is loaded once per run).

``--no-bab``: attack + alpha-CROWN only (``verify(..., bab=False)``). ``--limit N --spread``: N
instances evenly spaced over ``instances.csv`` (several models), not the first N. ``--table``:
a Markdown table per benchmark with the reference's verdicts on the same instances (consensus
and alpha-beta-CROWN's own published result).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import genbab
from genbab.api import verify
from genbab.bab.loop import BabConfig
from genbab.errors import GenbabError
from genbab.memory_tuning import tune_malloc


def instances(folder: Path) -> list[dict]:
    ref = {}
    if (folder / "reference.csv").exists():
        ref = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(open(folder / "reference.csv"))}
    rows = []
    for onnx, vnnlib, timeout in csv.reader(open(folder / "instances.csv")):
        known = ref.get((onnx, vnnlib), {})
        rows.append({"onnx": folder / onnx, "vnnlib": folder / vnnlib, "timeout": float(timeout),
                     "expected": known.get("consensus") or "unknown", "abcrown": known.get("abcrown_result") or "-"})
    return rows


def subset(rows: list[dict], limit: int, spread: bool) -> list[dict]:
    """The first ``limit`` rows, or ``limit`` rows evenly spaced over all of them (``spread``)."""
    if not limit or limit >= len(rows):
        return rows
    if not spread:
        return rows[:limit]
    step = len(rows) / limit
    return [rows[int(i * step)] for i in range(limit)]


TABLE_HEAD = ("| benchmark | run / total | proved (unsat) | falsified (sat) | open | wrong | median s (solved) "
              "| reference unsat / sat | alpha-beta-CROWN unsat / sat |\n|---|---|---|---|---|---|---|---|---|")


def table_row(bench: str, rows: list[dict], total: int, tally: dict, median: float) -> str:
    """One Markdown row: our tally and the reference's on the same instances."""
    ref = [sum(r["expected"] == v for r in rows) for v in ("unsat", "sat")]
    abc = [sum(r["abcrown"] == v for r in rows) for v in ("unsat", "sat")]
    med = f"{median:.1f}" if median == median else "-"
    return (f"| {bench} | {len(rows)} / {total} | {tally['unsat']} | {tally['sat']} | {tally['open']} | "
            f"{tally['wrong']} | {med} | {ref[0]} / {ref[1]} | {abc[0]} / {abc[1]} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmarks", nargs="+")
    ap.add_argument("--timeout-scale", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--max-timeout", type=float, default=0, help="cap every instance's timeout (seconds)")
    ap.add_argument("--spread", action="store_true", help="with --limit: evenly spaced instances")
    ap.add_argument("--no-bounds", action="store_true")
    ap.add_argument("--no-bab", action="store_true", help="attack + alpha-CROWN only, no branch and bound")
    ap.add_argument("--branching", choices=["bbps", "babsr"], default="bbps", help="activation-split heuristic")
    ap.add_argument("--branching-points", choices=["opt", "uniform"], default="opt", help="split points of smooth ops")
    ap.add_argument("--match", default="", help="only instances whose model or property path contains this")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--table", type=Path, help="write a Markdown summary table here")
    args = ap.parse_args()
    tune_malloc()  # as `genbab verify` does
    root = Path(os.environ.get("GENBAB_BENCHMARKS", Path(__file__).resolve().parents[2] / "shared" / "benchmarks"))
    out, table = [], [TABLE_HEAD]
    bab_config = BabConfig(branching=args.branching, branching_points=args.branching_points)
    wrong_total = 0
    for bench in args.benchmarks:
        everything = instances(root / bench)
        matching = [r for r in everything if args.match in str(r["onnx"]) or args.match in str(r["vnnlib"])]
        rows = subset(matching, args.limit, args.spread)
        tally, times, models = {"sat": 0, "unsat": 0, "open": 0, "wrong": 0}, [], {}
        for r in rows:
            model = models.get(r["onnx"]) or models.setdefault(r["onnx"], genbab.load_model(r["onnx"]))
            t0 = time.monotonic()
            timeout = r["timeout"] * args.timeout_scale
            timeout = min(timeout, args.max_timeout) if args.max_timeout else timeout
            try:
                status = verify(model, r["vnnlib"], timeout=timeout, bounds=not args.no_bounds, bab=not args.no_bab,
                                bab_config=bab_config).status
            except GenbabError as err:  # counted as open; the line shows why
                status = f"error ({err})"
            dt = time.monotonic() - t0
            if status in ("sat", "unsat") and dt > timeout + 2.0:  # the CLI would have answered timeout
                status = f"timeout (late {status})"
            res = SimpleNamespace(status=status)
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
        table.append(table_row(bench, rows, len(everything), tally, median))
        if args.table:
            args.table.write_text("\n".join(table) + "\n")
    if args.out:
        with open(args.out, "w", newline="") as fh:
            csv.writer(fh).writerows([["benchmark", "onnx", "vnnlib", "result", "time_s", "expected"], *out])
    return 1 if wrong_total else 0


if __name__ == "__main__":
    sys.exit(main())
