"""Start-up, branch-and-bound throughput and wall time of fresh `genbab verify` processes.

For one instance per shared benchmark family (``--instances`` overrides, as FAMILY/VNNLIB-NAME),
runs each engine variant (``--threads auto``, ``1`` and ``2``; ``--precision float64`` and
``float32`` when the installed genbab has those options) as a fresh process, one at a time, and reports per run:

- ``startup``: seconds from process start until ``genbab.verify`` began (``stats.startup_s``),
- ``ready``: ``startup`` plus loading the model and property (``stats.load_s``),
- ``bab dom/s``: domains bounded by branch and bound per second of branch and bound,
- ``wall``: the process's wall time (what VNN-COMP counts), and the verdict.

The model's folded graph is put in the graph cache first (``genbab prepare``, as VNN-COMP's
``prepare_instance.sh`` does) unless ``--cold``. Not a test: figures depend on the machine;
run it on a quiet one (two runs at once on two cores distort both).

    python benchmarks/engine_bench.py                      # every family, 30 s per run
    python benchmarks/engine_bench.py --instances lsnc/quadrotor2d_state_0 --timeout 60
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = Path(os.environ.get("GENBAB_BENCHMARKS", ROOT.parent / "shared" / "benchmarks"))
GENBAB = ROOT / ".venv" / "bin" / "genbab"


def family_rows(family: Path) -> list[tuple[Path, Path, float]]:
    with open(family / "instances.csv") as fh:
        return [(family / o.strip(), family / v.strip(), float(t)) for o, v, t in csv.reader(fh) if o.strip()]


def pick_instances(names: list[str] | None) -> list[tuple[str, Path, Path]]:
    """``(family, onnx, vnnlib)``: the named ones, else the first row of every family."""
    out = []
    for family in sorted(p for p in BENCHMARKS.iterdir() if (p / "instances.csv").exists()):
        rows = family_rows(family)
        if names is None:
            out.append((family.name, rows[0][0], rows[0][1]))
            continue
        for name in names:
            fam, _, stem = name.partition("/")
            if fam == family.name:
                match = [r for r in rows if r[1].name.split(".vnnlib")[0] == stem.split(".vnnlib")[0]]
                if not match:
                    sys.exit(f"no instance {name}")
                out.append((fam, match[0][0], match[0][1]))
    return out


def variants(genbab: Path) -> list[tuple[str, list[str]]]:
    help_text = subprocess.run([str(genbab), "verify", "--help"], capture_output=True, text=True).stdout
    precisions = ["float64", "float32"] if "--precision" in help_text else [None]
    out = []
    for precision in precisions:
        for threads in ("auto", 1, 2):
            if threads == "auto" and "auto|N" not in help_text.replace("AUTO|N", "auto|N"):
                continue  # this genbab's --threads takes numbers only
            flags = ["--threads", str(threads)] + (["--precision", precision] if precision else [])
            out.append((f"{precision or 'default'}/t{threads}", flags))
    return out


def run_one(genbab: Path, onnx: Path, vnnlib: Path, timeout: float, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "r.json"
        started = time.monotonic()
        proc = subprocess.run([str(genbab), "verify", str(onnx), str(vnnlib), "--timeout", str(timeout), "--quiet",
                               "--json", str(report), *flags], capture_output=True, text=True,
                              timeout=timeout + 120)
        wall = time.monotonic() - started
        stats = json.loads(report.read_text()).get("stats", {}) if report.exists() else {}
    bab = stats.get("bab", {})
    visited, bab_s = bab.get("visited"), bab.get("time_s")
    return {"status": proc.stdout.split()[0] if proc.stdout.strip() else f"exit {proc.returncode}",
            "wall_s": round(wall, 2), "startup_s": stats.get("startup_s"),
            "ready_s": None if stats.get("startup_s") is None else round(stats["startup_s"] + stats.get("load_s", 0), 3),
            "bab_visited": visited, "bab_s": bab_s,
            "domains_per_s": round(visited / bab_s) if visited and bab_s else None,
            "stderr_tail": proc.stderr.strip().splitlines()[-1:] if proc.returncode else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", help="comma-separated FAMILY/VNNLIB-STEM (default: first row of each family)")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--genbab", type=Path, default=GENBAB)
    ap.add_argument("--cold", action="store_true", help="do not fill the graph cache first")
    ap.add_argument("--json", type=Path, help="write every run's record here")
    ap.add_argument("--variant", action="append", help="only these variants (repeatable), e.g. float64/t1")
    args = ap.parse_args()
    instances = pick_instances(args.instances.split(",") if args.instances else None)
    records = []
    print(f"{'instance':44} {'variant':16} {'status':8} {'wall':>6} {'startup':>7} {'ready':>6} {'bab dom/s':>9}")
    for family, onnx, vnnlib in instances:
        if not args.cold:
            subprocess.run([str(args.genbab), "prepare", str(onnx)], capture_output=True, timeout=600)
        for name, flags in variants(args.genbab):
            if args.variant and name not in args.variant:
                continue
            rec = {"family": family, "onnx": onnx.name, "vnnlib": vnnlib.name, "variant": name,
                   **run_one(args.genbab, onnx, vnnlib, args.timeout, flags)}
            records.append(rec)
            label = f"{family}/{vnnlib.name.split('.vnnlib')[0]}"[:44]
            fmt = lambda v: "-" if v is None else f"{v}"  # noqa: E731
            print(f"{label:44} {name:16} {rec['status']:8} {rec['wall_s']:6.1f} {fmt(rec['startup_s']):>7} "
                  f"{fmt(rec['ready_s']):>6} {fmt(rec['domains_per_s']):>9}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
