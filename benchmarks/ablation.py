"""Ablations of branch-and-bound choices: the same instances run with ``--bab-option`` variants.

Each (instance, variant) is one fresh ``genbab verify`` process with the instance's own timeout
(wall time of the whole process, start-up included), one at a time; the model is put in the graph
cache first. Instances come from a benchmark folder's ``instances.csv`` under
``../shared/benchmarks`` (or ``$GENBAB_BENCHMARKS``), or with ``--abcrown-rows`` from its rows of
``abcrown_cpu.csv``, filtered by ``--match``. Prints per instance
and per variant the verdict, wall time and branch-and-bound domains, then a summary: instances
solved (agreeing with the reference consensus), wrong verdicts, median wall over the instances
every variant solves. Not a test: run it on a quiet machine.

    python benchmarks/ablation.py nn4sys_nonlinear --match cardinality \\
        --variant default: --variant per-box:shared_frontier=false
    python benchmarks/ablation.py lsnc --match quadrotor2d_state --variant default: \\
        --variant no-floor:input_coeff_floor=0
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_abcrown import BENCHMARKS, GENBAB, rows as abcrown_rows, run_genbab, solved, wrong  # noqa: E402


def instances(benchmark: str, match: str | None) -> list[dict]:
    """The rows of ``<benchmark>/instances.csv`` (with the reference consensus) containing ``match``."""
    folder = BENCHMARKS / benchmark
    consensus = {}
    if (folder / "reference.csv").exists():
        with open(folder / "reference.csv") as fh:
            consensus = {(r["onnx"], r["vnnlib"]): r.get("consensus") or "unknown" for r in csv.DictReader(fh)}
    out = []
    with open(folder / "instances.csv") as fh:
        for onnx, vnnlib, timeout in csv.reader(fh):
            if match and match not in onnx and match not in vnnlib:
                continue
            out.append({"benchmark": benchmark, "onnx": onnx, "vnnlib": vnnlib, "timeout_s": float(timeout),
                        "expected": consensus.get((onnx, vnnlib), "unknown")})
    return out


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` -> (name, the ``--bab-option`` flags)."""
    name, _, settings = text.partition(":")
    flags = []
    for setting in filter(None, settings.split(",")):
        flags += ["--bab-option", setting]
    return name, flags


def summary(results: dict[str, list[dict]]) -> str:
    names = list(results)
    both = [i for i in range(len(results[names[0]]))
            if all(solved(results[n][i]["genbab"], results[n][i]["expected"]) for n in names)]
    lines = ["| variant | instances | solved | wrong | median wall (solved by all) | domains (all instances) |",
             "|---|---|---|---|---|---|"]
    for name in names:
        rs = results[name]
        med = f"{statistics.median(rs[i]['genbab_wall_s'] for i in both):.1f} s" if both else "-"
        domains = sum(int(r["genbab_domains"] or 0) for r in rs)
        lines.append(f"| {name} | {len(rs)} | {sum(solved(r['genbab'], r['expected']) for r in rs)} | "
                     f"{sum(wrong(r['genbab'], r['expected']) for r in rs)} | {med} | {domains:,} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benchmark", help="a folder of the shared benchmarks, e.g. lsnc")
    ap.add_argument("--match", help="only instances whose onnx or vnnlib path contains this")
    ap.add_argument("--variant", action="append", required=True,
                    help="NAME:KEY=VALUE,... (BabConfig fields; 'default:' for none); repeatable")
    ap.add_argument("--abcrown-rows", action="store_true",
                    help="the benchmark's rows of abcrown_cpu.csv instead of its instances.csv")
    ap.add_argument("--genbab", type=Path, default=GENBAB)
    args = ap.parse_args()
    if args.abcrown_rows:
        rows = [r for r in abcrown_rows(BENCHMARKS) if r["benchmark"] == args.benchmark
                and (not args.match or args.match in r["onnx"] or args.match in r["vnnlib"])]
    else:
        rows = instances(args.benchmark, args.match)
    variants = [parse_variant(v) for v in args.variant]
    for onnx in sorted({r["onnx"] for r in rows}):
        subprocess.run([str(args.genbab), "prepare", str(BENCHMARKS / args.benchmark / onnx)], capture_output=True,
                       timeout=900)
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    print(f"{'instance':44} {'variant':14} {'expected':8} {'genbab':>8} {'wall':>7} {'domains':>9}")
    for row in rows:
        for name, flags in variants:
            out = {**row, **run_genbab(args.genbab, BENCHMARKS / args.benchmark, row, flags)}
            results[name].append(out)
            label = Path(row["vnnlib"]).name.split(".vnnlib")[0][:44]
            print(f"{label:44} {name:14} {row['expected']:8} {out['genbab']:>8} {out['genbab_wall_s']:7.1f} "
                  f"{out['genbab_domains']!s:>9}{'  WRONG' if wrong(out['genbab'], row['expected']) else ''}",
                  flush=True)
    print()
    print(summary(results))


if __name__ == "__main__":
    main()
