"""Deadline and memory check of fresh ``genbab verify`` processes, idle and with the second core busy.

Usage: python benchmarks/deadline_load.py [--timeout 10] [--per-family 2] [--families a,b,...]
       [--idle | --load] [--burners 1] [--json runs.json] [--genbab PATH] [--genbab-args "..."]
       [--pick hard|first] [--kill-after 60] [--benchmarks DIR]

For every shared benchmark family (``$GENBAB_BENCHMARKS`` or ``../shared/benchmarks``; a folder
without ``instances.csv`` is skipped) it runs ``--per-family`` instances, each as a fresh process

    genbab verify MODEL SPEC --timeout T --results-file F

with ``T = min(--timeout, the instance's own timeout)``, one at a time, and measures

- the wall time from spawn to exit (start-up included) and its *overshoot* over ``T``;
- the peak RSS of that process: ``ru_maxrss`` of the rusage that ``os.wait4(pid, 0)`` returns
  (KiB on Linux; all threads share one address space, so threads are covered).  ``genbab verify``
  starts no child processes today (checked with ``ps`` during runs; only ``genbab bench`` does),
  but in case one appears (e.g. a compiler worker), a monitor thread scans ``/proc/*/stat`` for
  descendants of the process every ``--sample`` seconds and keeps each descendant's ``VmHWM``
  from ``/proc/<pid>/status`` (and the process's own ``VmHWM``); the reported peak is then
  ``max(ru_maxrss, own VmHWM + sum of the descendants' VmHWM)`` (``ru_maxrss`` of wait4 already
  covers the largest reaped descendant, not their sum; the sum of peaks that need not coincide
  errs high, a peak of the process after its last sample errs low; ``peak_rss_upper_gb`` in the
  JSON is ``ru_maxrss`` + the descendants' peaks, a strict upper bound).  Without descendants it
  is exactly ``ru_maxrss``.  The ``children`` column / ``children_seen`` field says how many
  descendants were seen.
- the verdict (first line of the results file), compared with the family's published consensus
  (``reference.csv``, column ``consensus``): answering ``sat`` where the consensus is ``unsat``,
  or the reverse, is flagged WRONG.

Conditions: ``idle`` (nothing else started; the load average at the start is printed, so a busy
machine shows) and ``load`` (``--burners`` Python busy loops, default 1 = "the second core busy"
on a 2-core machine, started before the first run of the condition and killed after the last;
the share of a core they actually got is printed).  Default: both, idle first.  ``--idle`` or
``--load`` runs only that one.

Instance choice (deterministic, ``--pick hard``, the default): the family's models are ordered
by the compressed size of their largest instance (model + property), largest first, and taken
round robin; within a model, rows whose consensus is not ``sat`` come first, then the hardest by
alpha-beta-CROWN's published time (a timeout or no entry counts as hardest), then the largest,
then file order.  So instances that are unlikely to be decided at once, and the heaviest models,
come first.  ``--pick first``: the first N rows of ``instances.csv``.

Output: one table per condition (family, runs, verdicts seen, worst overshoot, median wall,
median pre-clock time = wall minus the time genbab reports on stdout, i.e. mostly start-up,
peak RSS, descendants, WRONG), then an overall line and ``PASS``/``FAIL`` against the targets
(every overshoot <= ``--max-overshoot`` = 2 s, every peak RSS < ``--max-rss-gb`` = 16 GB, where
GB = 1e9 bytes, no WRONG verdict and no crash).  A run that exits with a code other than 0 (or is killed
``--kill-after`` seconds after its deadline) is a crash and is listed with the end of its stderr.
Exit status: 0 whatever the targets say, 1 if any run crashed or any verdict is WRONG.
``--json OUT`` writes every run's record.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GENBAB = REPO / ".venv" / "bin" / "genbab"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def benchmarks_dir() -> Path:
    env = os.environ.get("GENBAB_BENCHMARKS")
    return Path(env) if env else REPO.parent / "shared" / "benchmarks"


# ---------------------------------------------------------------- instances

def _hardness(ref: dict) -> float:
    """alpha-beta-CROWN's published time; a timeout, unknown or missing entry counts as hardest."""
    if (ref.get("abcrown_result") or "").strip().lower() in ("", "timeout", "unknown"):
        return float("inf")
    try:
        return float(ref.get("abcrown_time_s") or "inf")
    except ValueError:
        return float("inf")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def family_rows(folder: Path) -> list[dict]:
    ref = {}
    if (folder / "reference.csv").exists():
        with open(folder / "reference.csv", newline="") as fh:
            ref = {(r["onnx"], r["vnnlib"]): r for r in csv.DictReader(fh)}
    rows = []
    with open(folder / "instances.csv", newline="") as fh:
        for index, rec in enumerate(csv.reader(fh)):
            if len(rec) < 3 or not rec[0].strip():
                continue
            onnx, vnnlib, timeout = (x.strip() for x in rec[:3])
            known = ref.get((onnx, vnnlib), {})
            rows.append({"index": index, "onnx": onnx, "vnnlib": vnnlib, "timeout": float(timeout),
                         "expected": (known.get("consensus") or "unknown").strip(),
                         "hardness": _hardness(known),
                         "size": _size(folder / onnx) + _size(folder / vnnlib)})
    return rows


def pick(rows: list[dict], n: int, how: str) -> list[dict]:
    if how == "first" or n >= len(rows):
        return rows[:n]
    by_model: dict[str, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["onnx"], []).append(r)
    for group in by_model.values():
        group.sort(key=lambda r: (r["expected"] == "sat", -r["hardness"], -r["size"], r["index"]))
    models = sorted(by_model, key=lambda m: (-max(r["size"] for r in by_model[m]),
                                             min(r["index"] for r in by_model[m])))
    chosen, depth = [], 0
    while len(chosen) < n:
        for m in models:
            if depth < len(by_model[m]) and len(chosen) < n:
                chosen.append(by_model[m][depth])
        depth += 1
    return chosen


# ---------------------------------------------------------------- /proc helpers

def _ppid_map() -> dict[int, int]:
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2:].split()  # fields after "pid (comm)"
        if len(rest) > 1:
            out[int(name)] = int(rest[1])
    return out


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p, pp in _ppid_map().items():
        children.setdefault(pp, []).append(p)
    found, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        rest = data[data.rfind(b")") + 2:].split()
        return (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime + stime
    except (OSError, ValueError, IndexError):
        return 0.0


# ---------------------------------------------------------------- one run

class Monitor(threading.Thread):
    """Samples the descendants of ``pid`` and kills the process group after ``kill_at``."""

    def __init__(self, pid: int, kill_at: float, interval: float):
        super().__init__(daemon=True)
        self.pid, self.kill_at, self.interval = pid, kill_at, interval
        self.stop = threading.Event()
        self.hwm: dict[int, int] = {}  # descendant pid -> peak VmHWM (KiB)
        self.own_hwm = 0  # the process's own VmHWM at the last sample (KiB)
        self.killed = False

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            if time.monotonic() >= self.kill_at and not self.killed:
                self.killed = True
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except OSError:
                    pass
            found = descendants(self.pid)
            if found:  # only then is the process's own VmHWM needed
                self.own_hwm = max(self.own_hwm, vm_hwm_kib(self.pid))
            for d in found:
                self.hwm[d] = max(self.hwm.get(d, 0), vm_hwm_kib(d))


OWN_TIME = re.compile(r"^(\S+)\s+\(([0-9.]+)s\)", re.M)


def run_one(genbab: str, extra: list[str], folder: Path, row: dict, timeout: float, workdir: Path,
            kill_after: float, sample: float) -> dict:
    t = min(timeout, row["timeout"])
    results = workdir / "result.txt"
    for f in ("result.txt", "stdout.txt", "stderr.txt"):
        (workdir / f).unlink(missing_ok=True)
    cmd = [genbab, "verify", str(folder / row["onnx"]), str(folder / row["vnnlib"]),
           "--timeout", f"{t:g}", "--results-file", str(results), *extra]
    with open(workdir / "stdout.txt", "wb") as out, open(workdir / "stderr.txt", "wb") as err:
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        mon = Monitor(proc.pid, start + t + kill_after, sample)
        mon.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.monotonic() - start
        mon.stop.set()
        mon.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: keep Popen quiet
    try:  # anything the process left behind in its group (it should leave nothing)
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    stdout = (workdir / "stdout.txt").read_text(errors="replace")
    stderr = (workdir / "stderr.txt").read_text(errors="replace")
    verdict = "none"
    if results.exists():
        lines = results.read_text(errors="replace").split("\n", 1)
        verdict = lines[0].strip() or "empty"
    m = OWN_TIME.search(stdout)
    own = float(m.group(2)) if m else None
    if verdict == "none" and m:
        verdict = m.group(1)
    expected = row["expected"]
    wrong = verdict in ("sat", "unsat") and expected in ("sat", "unsat") and verdict != expected
    self_kib = usage.ru_maxrss
    desc_kib = sum(mon.hwm.values())
    # ru_maxrss already holds the max over the descendants the process reaped, so add their
    # peaks to the process's own sampled VmHWM instead; without descendants this is ru_maxrss.
    peak_kib = max(self_kib, mon.own_hwm + desc_kib) if mon.hwm else self_kib
    return {"onnx": row["onnx"], "vnnlib": row["vnnlib"], "timeout_s": t, "wall_s": round(wall, 3),
            "overshoot_s": round(wall - t, 3), "own_time_s": own,
            "pre_clock_s": round(wall - own, 3) if own is not None else None,
            "exit_code": proc.returncode, "killed": mon.killed,
            "crashed": proc.returncode != 0 or mon.killed,
            "verdict": verdict, "expected": expected, "wrong": wrong,
            "maxrss_kib": self_kib, "children_seen": len(mon.hwm), "children_hwm_kib": desc_kib,
            "own_hwm_sampled_kib": mon.own_hwm, "peak_rss_gb": round(peak_kib * 1024 / 1e9, 3),
            "peak_rss_upper_gb": round((self_kib + desc_kib) * 1024 / 1e9, 3),
            "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
            "command": shlex.join(cmd), "stderr_tail": stderr[-1500:] if proc.returncode != 0 or mon.killed else ""}


# ---------------------------------------------------------------- load

class Burners:
    """``n`` Python busy loops in their own sessions; ``share()`` = cores they actually got."""

    def __init__(self, n: int):
        self.n, self.procs, self.t0 = n, [], 0.0

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True) for _ in range(self.n)]
        self.t0 = time.monotonic()
        time.sleep(0.5)
        return self

    def share(self) -> float:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        return sum(cpu_seconds(p.pid) for p in self.procs) / elapsed

    def __exit__(self, *exc):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
        self.procs = []
        return False


# ---------------------------------------------------------------- report

def fmt_verdicts(runs: list[dict]) -> str:
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def table(title: str, runs: list[dict], families: list[str]) -> str:
    head = (f"{'family':<18} {'runs':>4}  {'verdicts':<22} {'worst over':>10} {'med wall':>8} "
            f"{'med pre-clk':>11} {'peak RSS GB':>11} {'children':>8} {'WRONG':>5} {'crash':>5}")
    lines = [title, head, "-" * len(head)]
    groups = [(f, [r for r in runs if r["family"] == f]) for f in families] + [("ALL", runs)]
    for fam, rs in groups:
        if not rs:
            continue
        if fam == "ALL":
            lines.append("-" * len(head))
        pre = [r["pre_clock_s"] for r in rs if r["pre_clock_s"] is not None]
        lines.append(f"{fam:<18} {len(rs):>4}  {fmt_verdicts(rs):<22} {max(r['overshoot_s'] for r in rs):>+10.2f} "
                     f"{statistics.median(r['wall_s'] for r in rs):>8.2f} "
                     f"{(f'{statistics.median(pre):.2f}' if pre else '-'):>11} "
                     f"{max(r['peak_rss_gb'] for r in rs):>11.2f} {max(r['children_seen'] for r in rs):>8} "
                     f"{sum(r['wrong'] for r in rs):>5} {sum(r['crashed'] for r in rs):>5}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=10.0, help="genbab's --timeout (capped by the instance's)")
    ap.add_argument("--per-family", type=int, default=2, help="instances per family")
    ap.add_argument("--families", default="", help="comma-separated family names (default: all)")
    cond = ap.add_mutually_exclusive_group()
    cond.add_argument("--idle", action="store_true", help="only the idle condition")
    cond.add_argument("--load", action="store_true", help="only the loaded condition (second core busy)")
    ap.add_argument("--burners", type=int, default=1, help="busy loops in the loaded condition")
    ap.add_argument("--json", type=Path, help="write every run's record here")
    ap.add_argument("--genbab", default=str(DEFAULT_GENBAB), help="the genbab executable")
    ap.add_argument("--genbab-args", default="", help="extra arguments for genbab verify (one string)")
    ap.add_argument("--pick", choices=["hard", "first"], default="hard", help="how instances are chosen")
    ap.add_argument("--kill-after", type=float, default=60.0, help="kill a run this long after its deadline")
    ap.add_argument("--sample", type=float, default=0.25, help="seconds between child-process scans")
    ap.add_argument("--max-overshoot", type=float, default=2.0, help="target: worst overshoot (s)")
    ap.add_argument("--max-rss-gb", type=float, default=16.0, help="target: peak RSS (GB = 1e9 bytes)")
    ap.add_argument("--benchmarks", type=Path, default=benchmarks_dir(), help="the shared benchmarks folder")
    args = ap.parse_args()

    if not os.access(args.genbab, os.X_OK):
        print(f"error: {args.genbab} is not an executable", file=sys.stderr)
        return 2
    wanted = [f.strip() for f in args.families.split(",") if f.strip()]
    available = sorted(p.name for p in args.benchmarks.iterdir() if (p / "instances.csv").exists())
    unknown = [f for f in wanted if f not in available]
    if unknown:
        print(f"error: no such family {unknown} (have: {', '.join(available)})", file=sys.stderr)
        return 2
    families = wanted or available
    plan = [(fam, row) for fam in families for row in pick(family_rows(args.benchmarks / fam), args.per_family, args.pick)]
    conditions = ["idle"] if args.idle else ["load"] if args.load else ["idle", "load"]
    extra = shlex.split(args.genbab_args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # burners are killed on the way out

    est = sum(min(args.timeout, row["timeout"]) for _, row in plan) * len(conditions)
    print(f"# {len(plan)} instances x {len(conditions)} condition(s), timeout {args.timeout:g} s, "
          f"genbab {args.genbab} {' '.join(extra)}".rstrip())
    print(f"# at most ~{est / 60:.1f} min of deadlines plus start-up and overshoot; {os.cpu_count()} CPUs")
    records: list[dict] = []
    tables = []
    with tempfile.TemporaryDirectory(prefix="deadline_load_") as tmp:
        for cond_name in conditions:
            print(f"\n## condition: {cond_name}  (load average at start: "
                  f"{' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
            burn = Burners(args.burners if cond_name == "load" else 0)
            with burn:
                runs = []
                for fam, row in plan:
                    rec = run_one(args.genbab, extra, args.benchmarks / fam, row, args.timeout, Path(tmp),
                                  args.kill_after, args.sample)
                    rec.update(condition=cond_name, family=fam)
                    runs.append(rec)
                    flag = " WRONG" if rec["wrong"] else ""
                    flag += f" CRASH(exit {rec['exit_code']}{', killed' if rec['killed'] else ''})" if rec["crashed"] else ""
                    print(f"  {fam:<17} {Path(row['vnnlib']).name:<42} T={rec['timeout_s']:<5g} "
                          f"{rec['verdict']:<8} (ref {rec['expected']:<7}) wall {rec['wall_s']:6.2f} s "
                          f"over {rec['overshoot_s']:+6.2f} s  rss {rec['peak_rss_gb']:5.2f} GB{flag}", flush=True)
                share = burn.share() if burn.procs else None
            records.extend(runs)
            title = f"\n### {cond_name}" + (f" ({args.burners} burner(s) got {share:.2f} core(s))" if share is not None else "")
            tables.append(table(title, runs, families))
            print(tables[-1], flush=True)

    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    worst_over = max(r["overshoot_s"] for r in records)
    peak = max(r["peak_rss_gb"] for r in records)
    wrong = [r for r in records if r["wrong"]]
    crashed = [r for r in records if r["crashed"]]
    print(f"\n# overall: {len(records)} runs, worst overshoot {worst_over:+.2f} s (target <= {args.max_overshoot:g}), "
          f"peak RSS {peak:.2f} GB (target < {args.max_rss_gb:g}), WRONG {len(wrong)}, crashed {len(crashed)}")
    for r in wrong:
        print(f"WRONG [{r['condition']}] {r['family']} {r['vnnlib']}: answered {r['verdict']}, published {r['expected']}")
    for r in crashed:
        print(f"CRASH [{r['condition']}] {r['family']} {r['vnnlib']}: exit {r['exit_code']}"
              f"{' (killed after the deadline)' if r['killed'] else ''}\n  {r['command']}\n"
              + "\n".join("    " + line for line in r["stderr_tail"].strip().splitlines()[-8:]))
    reasons = [why for bad, why in ((worst_over > args.max_overshoot, "overshoot"), (peak >= args.max_rss_gb, "RSS"),
                                    (bool(wrong), "WRONG verdict"), (bool(crashed), "crashed runs")) if bad]
    ok = not reasons
    print("PASS" if ok else f"FAIL ({', '.join(reasons)})")
    return 1 if crashed or wrong else 0


if __name__ == "__main__":
    sys.exit(main())
