"""Mutation figures: does the fast soundness suite kill deliberate soundness bugs?

Each mutant is one textual change to soundness-critical code (a relaxation line moved toward the
function, planes swapped, a McCormick plane dropped, a split constraint's sign flipped, the
clipping cutting too far, the concretisation's sign split swapped, the rounding allowance
dropped). For each, the repository is copied to a temporary folder laid out as the installed
package (``kernels/`` as ``genbab/kernels`` and so on), the change applied there, and the fast
soundness tests run against the copy (``PYTHONPATH`` puts it first). A mutant is *killed* when
some test fails. The working tree is never touched, so this can run beside other work.

    python benchmarks/mutants.py            # all mutants
    python benchmarks/mutants.py --only concretisation-sign
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Two tiers: the bound-level soundness tests (about 25 s), then, for a mutant they miss, the
# branch-and-bound tests (about 3 min).
TIERS = [["tests/test_relaxations.py", "tests/test_backward_fast_paths.py", "tests/test_rigorous_decisions.py",
          "tests/test_precision.py", "tests/test_bounds.py"],
         ["tests/test_bab.py", "tests/test_warm_start.py", "tests/test_bab_heuristics.py"]]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once
    new: str


MUTANTS = [
    Mutant("lower-line-toward-function", "genbab/ops/relaxation.py",
           "else round_down(b - margin, dtype)", "else round_down(b - margin, dtype) + 1e-3"),
    Mutant("upper-line-toward-function", "genbab/ops/relaxation.py",
           "b_r = round_up(b + margin, dtype) if upper", "b_r = round_up(b + margin, dtype) - 1e-3 if upper"),
    Mutant("relaxation-lines-swapped", "genbab/ops/relaxation.py",
           "    return Relaxation(*out)\n", "    return Relaxation(out[2], out[3], out[0], out[1])\n"),
    Mutant("mccormick-lower-plane-dropped", "genbab/ops/bilinear.py",
           "lower = _plane(al * ly64 + (1 - al) * uy64, al * lx64 + (1 - al) * ux64, xs, ys, dt, False)",
           "lower = _plane(al * ly64 + (1 - al) * uy64, al * lx64 + (1 - al) * ux64, xs[:1], ys[:1], dt, False)"),
    Mutant("mccormick-planes-swapped", "genbab/ops/bilinear.py",
           "    return BilinearRelaxation(lower, upper)\n", "    return BilinearRelaxation(upper, lower)\n"),
    Mutant("split-constraint-sign-flipped", "genbab/bounds/alpha.py",
           "out[name] = (beta_u - beta_l, bias)", "out[name] = (beta_l - beta_u, bias)"),
    Mutant("clipping-cuts-too-far", "genbab/bab/clipping.py",
           "reach = gap * (1 + REL_SLACK) / A.abs().clamp_min(1e-300)",
           "reach = 0.5 * gap / A.abs().clamp_min(1e-300)"),
    Mutant("backward-sign-split-swapped", "genbab/bounds/nonlinear.py",
           "    pos, neg = A.clamp(min=0), A.clamp(max=0)\n    coeff = pos * lines.slope_lower\n",
           "    neg, pos = A.clamp(min=0), A.clamp(max=0)\n    coeff = pos * lines.slope_lower\n"),
    Mutant("concretisation-sign", "genbab/bounds/box.py",
           "value = torch.bmm(A_flat, center).squeeze(-1) - spread[..., 0] + bias",
           "value = torch.bmm(A_flat, center).squeeze(-1) + spread[..., 0] + bias"),
    Mutant("rounding-allowance-dropped", "genbab/bounds/box.py",
           "    return (n + 4) * fi.eps * 1.01 * (magnitude + bias.abs()) + (n + 4) * fi.tiny\n",
           "    return 0 * magnitude\n"),
    Mutant("rounding-ledger-dropped", "genbab/bounds/engine.py",
           "return A_in, rounding.subtract(bias, err * rounding.SAFETY)", "return A_in, bias"),
    Mutant("box-cast-inward", "genbab/bounds/rounding.py",
           "    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, _toward(y, -math.inf)), y)\n",
           "    return torch.where(y.to(x.dtype) > x, torch.nextafter(y, _toward(y, math.inf)), y)\n"),
]


def package_copy(dest: Path) -> None:
    """The repository as the installed package sees it: ``genbab/`` with ``kernels``,
    ``lookup_tables`` and ``specs`` inside, plus ``tests/`` and ``specs/`` at the top."""
    shutil.copytree(ROOT / "genbab", dest / "genbab", ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("kernels", "lookup_tables", "specs"):
        shutil.copytree(ROOT / sub, dest / "genbab" / sub, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("tests", "specs", "lookup_tables"):
        shutil.copytree(ROOT / sub, dest / sub, ignore=shutil.ignore_patterns("__pycache__"))


def apply(dest: Path, mutant: Mutant) -> None:
    target = dest / mutant.path
    if mutant.path.startswith("kernels/"):
        target = dest / "genbab" / mutant.path
    text = target.read_text()
    if text.count(mutant.old) != 1:
        raise SystemExit(f"mutant {mutant.name}: the text to change occurs {text.count(mutant.old)} times in {mutant.path}")
    target.write_text(text.replace(mutant.old, mutant.new))


def run_tests(dest: Path, timeout: float) -> tuple[bool, str]:
    """True when some test of some tier fails (the mutant is killed); pytest's last summary line."""
    env = {**os.environ, "PYTHONPATH": str(dest), "TRITON_INTERPRET": "1"}
    summary = ""
    for tests in TIERS:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        try:
            proc = subprocess.run(cmd, cwd=dest, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False, "timed out (counted as survived)"
        lines = [line for line in proc.stdout.splitlines() if line.strip()]
        summary = lines[-1] if lines else proc.stderr[-200:]
        if proc.returncode != 0:
            return True, summary
    return False, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="names of the mutants to run")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    with tempfile.TemporaryDirectory(prefix="genbab-unmutated-") as tmp:
        package_copy(Path(tmp))
        failed, summary = run_tests(Path(tmp), args.timeout)
    if failed:  # a kill means nothing when the unmutated copy fails too
        raise SystemExit(f"the unmutated copy fails the tests: {summary}")
    print(f"{'unmutated':34s} {'passes':9s}          {summary}", flush=True)
    killed = 0
    for mutant in chosen:
        with tempfile.TemporaryDirectory(prefix="genbab-mutant-") as tmp:
            dest = Path(tmp)
            package_copy(dest)
            apply(dest, mutant)
            start = time.monotonic()
            dead, summary = run_tests(dest, args.timeout)
        killed += dead
        print(f"{mutant.name:34s} {'killed' if dead else 'SURVIVED':9s} {time.monotonic() - start:6.1f}s  {summary}",
              flush=True)
    print(f"killed {killed} of {len(chosen)} mutants")


if __name__ == "__main__":
    main()
