"""Shared test fixtures: where the shared VNN-COMP benchmarks live.

The benchmarks are read from ``$GENBAB_BENCHMARKS`` or ``../shared/benchmarks`` beside the
repository; tests that need them skip cleanly when the folder is absent.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def find_benchmarks_dir() -> Path | None:
    """Return the shared benchmarks folder, or None when it is not there."""
    env = os.environ.get("GENBAB_BENCHMARKS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "benchmarks")
    for c in candidates:
        if c.is_dir():
            return c
    return None


BENCHMARKS = find_benchmarks_dir()
needs_benchmarks = pytest.mark.skipif(BENCHMARKS is None, reason="../shared/benchmarks is absent")


def benchmark_folders() -> list[Path]:
    if BENCHMARKS is None:
        return []
    return sorted(p for p in BENCHMARKS.iterdir() if p.is_dir())


def all_models() -> list[Path]:
    """Every ONNX model in the shared benchmarks (all folders, ``units`` included)."""
    return sorted(p for f in benchmark_folders() for p in (f / "onnx").glob("*.onnx*"))


def all_vnnlibs() -> list[Path]:
    out = []
    for f in benchmark_folders():
        out += list(f.glob("*.vnnlib*")) + list((f / "vnnlib").glob("*.vnnlib*"))
    return sorted(out)


def reference_rows(folder: Path) -> list[dict]:
    """Rows of a benchmark's ``reference.csv`` with absolute paths and the instance timeout."""
    ref = folder / "reference.csv"
    if not ref.exists():
        return []
    timeouts = {}
    with open(folder / "instances.csv") as fh:
        for onnx, vnnlib, timeout in csv.reader(fh):
            timeouts[(onnx.strip(), vnnlib.strip())] = float(timeout)
    rows = []
    with open(ref) as fh:
        for r in csv.DictReader(fh):
            key = (r["onnx"], r["vnnlib"])
            rows.append({**r, "onnx_path": folder / r["onnx"], "vnnlib_path": folder / r["vnnlib"],
                         "timeout": timeouts.get(key, 60.0), "benchmark": folder.name})
    return rows


def first_spec_for(model: Path) -> Path | None:
    """The first vnnlib paired with ``model`` in its folder's instances.csv (units: none)."""
    folder = model.parent.parent
    inst = folder / "instances.csv"
    if not inst.exists():
        return None
    with open(inst) as fh:
        for onnx, vnnlib, _ in csv.reader(fh):
            if (folder / onnx.strip()).resolve() == model.resolve():
                return folder / vnnlib.strip()
    return None


def read_text(path: Path) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        return fh.read()
