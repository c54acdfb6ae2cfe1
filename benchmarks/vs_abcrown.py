"""genbab side by side with alpha-beta-CROWN on the instances of ``abcrown_cpu.csv``.

``../shared/benchmarks/abcrown_cpu.csv`` (or ``$GENBAB_BENCHMARKS``) holds alpha-beta-CROWN's own
result, wall time (start-up included) and domain count on 65 shared instances, run unmodified on
this kind of 2-core CPU. This script runs a fresh ``genbab verify`` process per row, one at a
time, with the row's timeout, and prints both side by side with the reference consensus:

- per instance: the verdicts, both wall times, genbab's branch-and-bound domains;
- per benchmark and in all: instances solved (``sat``/``unsat`` agreeing with the reference or
  where it has none), wrong verdicts, wall median over the instances both solve.

Wall time is the whole process, start-up included (VNN-COMP times ``run_instance.sh``); the model
is put in the graph cache first (``genbab prepare``, as ``prepare_instance.sh`` does), untimed.
Not a test: run it on a quiet machine, nothing else on the second core. ``--out`` keeps one CSV
row per finished instance and a rerun skips the rows already there (``--fresh`` starts over).

    python benchmarks/vs_abcrown.py                          # all 65 rows (about 1 h 30 at most)
    python benchmarks/vs_abcrown.py --benchmark lsnc --out /tmp/lsnc.csv
    python benchmarks/vs_abcrown.py --match quadrotor2d_state --genbab /path/to/other/genbab
    python benchmarks/vs_abcrown.py --instances --benchmark lsnc --out /tmp/lsnc40.csv   # all 40, own timeouts
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(os.environ.get("GENBAB_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
GENBAB = ROOT / ".venv" / "bin" / "genbab"
FIELDS = ("benchmark", "onnx", "vnnlib", "timeout_s", "expected", "abcrown", "abcrown_wall_s", "abcrown_domains",
          "genbab", "genbab_wall_s", "genbab_domains", "abcrown_published")


def rows(benchmarks: Path) -> list[dict]:
    """The rows of ``abcrown_cpu.csv`` with each instance's reference consensus."""
    consensus: dict[tuple[str, str, str], str] = {}
    out = []
    with open(benchmarks / "abcrown_cpu.csv") as fh:
        for row in csv.DictReader(fh):
            bench = row["benchmark"]
            if bench not in {k[0] for k in consensus}:
                ref = benchmarks / bench / "reference.csv"
                if ref.exists():
                    with open(ref) as rf:
                        consensus.update({(bench, r["onnx"], r["vnnlib"]): r.get("consensus") or "unknown"
                                          for r in csv.DictReader(rf)})
            out.append({"benchmark": bench, "onnx": row["onnx"], "vnnlib": row["vnnlib"],
                        "timeout_s": float(row["timeout_s"]),
                        "expected": consensus.get((bench, row["onnx"], row["vnnlib"]), "unknown"),
                        "abcrown": row["result"], "abcrown_wall_s": float(row["wall_s"]),
                        "abcrown_domains": row.get("domains", "")})
    return out


def suite_rows(benchmarks: Path, names: list[str]) -> list[dict]:
    """Every instance of ``instances.csv`` of the benchmarks ``names``, at its own timeout.

    alpha-beta-CROWN's CPU columns are filled where ``abcrown_cpu.csv`` has the same instance
    (``-`` elsewhere); ``abcrown_published`` is its VNN-COMP result (GPU) from ``reference.csv``."""
    cpu = {(r["benchmark"], r["onnx"], r["vnnlib"]): r for r in rows(benchmarks)}
    out = []
    for bench in names:
        folder = benchmarks / bench
        ref = {}
        if (folder / "reference.csv").exists():
            with open(folder / "reference.csv") as fh:
                ref = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(fh)}
        with open(folder / "instances.csv") as fh:
            for onnx, vnnlib, timeout in csv.reader(fh):
                known = ref.get((onnx, vnnlib), {})
                mine = cpu.get((bench, onnx, vnnlib), {})
                out.append({"benchmark": bench, "onnx": onnx, "vnnlib": vnnlib, "timeout_s": float(timeout),
                            "expected": known.get("consensus") or "unknown",
                            "abcrown": mine.get("abcrown", "-"), "abcrown_wall_s": mine.get("abcrown_wall_s", float("nan")),
                            "abcrown_domains": mine.get("abcrown_domains", ""),
                            "abcrown_published": known.get("abcrown_result") or "-"})
    return out


def run_genbab(genbab: Path, folder: Path, row: dict, extra: list[str]) -> dict:
    """One fresh ``genbab verify`` process: its verdict, wall time and branch-and-bound domains."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        started = time.monotonic()
        proc = subprocess.run([str(genbab), "verify", str(folder / row["onnx"]), str(folder / row["vnnlib"]),
                               "--timeout", str(row["timeout_s"]), "--quiet", "--json", str(report), *extra],
                              capture_output=True, text=True, timeout=row["timeout_s"] + 120)
        wall = time.monotonic() - started
        stats = json.loads(report.read_text()).get("stats", {}) if report.exists() else {}
    verdict = proc.stdout.split()[0] if proc.stdout.strip() else f"exit{proc.returncode}"
    return {"genbab": verdict, "genbab_wall_s": round(wall, 2),
            "genbab_domains": (stats.get("bab") or {}).get("visited", "")}


def solved(verdict: str, expected: str) -> bool:
    return verdict in ("sat", "unsat") and not wrong(verdict, expected)


def wrong(verdict: str, expected: str) -> bool:
    return verdict in ("sat", "unsat") and expected in ("sat", "unsat") and verdict != expected


def summary(done: list[dict]) -> str:
    """Per benchmark and overall: solved, wrong, wall medians over the instances both solve."""
    lines = ["| benchmark | instances | alpha-beta-CROWN solved | genbab solved | wrong (abcrown / genbab) "
             "| both solved: median wall abcrown / genbab | genbab only | abcrown only |",
             "|---|---|---|---|---|---|---|---|"]
    if any(r.get("abcrown_published") for r in done):  # --instances: its VNN-COMP (GPU) verdicts too
        lines[0] += " alpha-beta-CROWN VNN-COMP (GPU) solved |"
        lines[1] += "---|"
    groups = sorted({r["benchmark"] for r in done}) + ["all"]
    for bench in groups:
        rs = [r for r in done if bench in ("all", r["benchmark"])]
        a = [solved(r["abcrown"], r["expected"]) for r in rs]
        g = [solved(r["genbab"], r["expected"]) for r in rs]
        both = [r for r, x, y in zip(rs, a, g) if x and y]
        med = (f"{statistics.median(float(r['abcrown_wall_s']) for r in both):.1f} / "
               f"{statistics.median(float(r['genbab_wall_s']) for r in both):.1f} s" if both else "-")
        has_cpu = [r["abcrown"] != "-" for r in rs]  # --instances: rows abcrown_cpu.csv lacks count for neither
        a_text = f"{sum(a)} of {sum(has_cpu)}" if not all(has_cpu) else f"{sum(a)}"
        lines.append(f"| {'**all**' if bench == 'all' else bench} | {len(rs)} | {a_text} | {sum(g)} | "
                     f"{sum(wrong(r['abcrown'], r['expected']) for r in rs)} / "
                     f"{sum(wrong(r['genbab'], r['expected']) for r in rs)} | {med} | "
                     f"{sum(y and not x and c for x, y, c in zip(a, g, has_cpu))} | "
                     f"{sum(x and not y and c for x, y, c in zip(a, g, has_cpu))} |"
                     + (f" {sum(solved(r.get('abcrown_published') or '-', r['expected']) for r in rs)} |"
                        if lines[0].endswith("(GPU) solved |") else ""))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", action="append", help="only these benchmarks (repeatable)")
    ap.add_argument("--match", help="only rows whose vnnlib or onnx path contains this")
    ap.add_argument("--genbab", type=Path, default=GENBAB, help="the genbab executable to run")
    ap.add_argument("--out", type=Path, help="CSV of finished rows; a rerun resumes from it")
    ap.add_argument("--fresh", action="store_true", help="ignore the rows already in --out")
    ap.add_argument("--flag", action="append", default=[], help="extra option for genbab verify (repeatable)")
    ap.add_argument("--instances", action="store_true",
                    help="every instance of the --benchmark folders' instances.csv at its own timeout, not only "
                         "the abcrown_cpu.csv rows (alpha-beta-CROWN's CPU figures where that file has the row)")
    args = ap.parse_args()
    if args.instances and not args.benchmark:
        ap.error("--instances needs --benchmark")
    every = suite_rows(BENCHMARKS, args.benchmark) if args.instances else rows(BENCHMARKS)
    todo = [r for r in every if (not args.benchmark or r["benchmark"] in args.benchmark)
            and (not args.match or args.match in r["vnnlib"] or args.match in r["onnx"])]
    done: list[dict] = []
    if args.out and args.out.exists() and not args.fresh:
        with open(args.out) as fh:
            done = list(csv.DictReader(fh))
    keys = {(r["benchmark"], r["onnx"], r["vnnlib"]) for r in done}
    done = [r for r in done if any((t["benchmark"], t["onnx"], t["vnnlib"]) == (r["benchmark"], r["onnx"], r["vnnlib"])
                                   for t in todo)]
    if args.out and (args.fresh or not args.out.exists()):
        with open(args.out, "w", newline="") as fh:
            csv.DictWriter(fh, FIELDS).writeheader()
    print(f"{'instance':58} {'expected':8} {'abcrown':>8} {'wall':>7} {'genbab':>8} {'wall':>7} {'domains':>9}")
    prepared: set[Path] = set()
    for row in todo:
        key = (row["benchmark"], row["onnx"], row["vnnlib"])
        if key in keys:
            continue
        folder = BENCHMARKS / row["benchmark"]
        if folder / row["onnx"] not in prepared:
            subprocess.run([str(args.genbab), "prepare", str(folder / row["onnx"])], capture_output=True, timeout=900)
            prepared.add(folder / row["onnx"])
        row = {**row, **run_genbab(args.genbab, folder, row, args.flag)}
        done.append(row)
        if args.out:
            with open(args.out, "a", newline="") as fh:
                csv.DictWriter(fh, FIELDS).writerow(row)
        name = f"{row['benchmark']}/{Path(row['vnnlib']).name.split('.vnnlib')[0]}"[:58]
        flag = "  WRONG" if wrong(row["genbab"], row["expected"]) else ""
        print(f"{name:58} {row['expected']:8} {row['abcrown']:>8} {float(row['abcrown_wall_s']):7.1f} {row['genbab']:>8} "
              f"{row['genbab_wall_s']:7.1f} {row['genbab_domains']!s:>9}{flag}", flush=True)
    print()
    print(summary(done))


if __name__ == "__main__":
    main()
