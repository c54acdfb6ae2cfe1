"""Shared test fixtures: where the shared VNN-COMP benchmarks live; skips that CI refuses.

The benchmarks are read from ``$GENBAB_BENCHMARKS`` or ``../shared/benchmarks`` beside the
repository; tests that need them skip cleanly when the folder is absent.

Skips: every skip is listed with its reason at the end of a run (``-ra`` in pyproject.toml).
With ``GENBAB_REQUIRE_ALL=1`` in the environment (``.ci/run`` sets it) any skipped test, or any
test module skipped at collection, fails the session and is named with its reason, unless the
test is marked ``@pytest.mark.optional`` (it may skip in CI too, e.g. one that needs a CUDA
device). CI thus cannot pass with the Triton interpreter tests, the vnncomp scripts' tests or the
tests of ``../shared/benchmarks`` silently skipped; without the variable (a developer's
``make test``) skips stay skips.
"""

from __future__ import annotations

import csv
import gzip
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: its many small tensor ops are slower on two threads."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def find_benchmarks_dir() -> Path | None:
    """Return the shared benchmarks folder, or None when it is not there."""
    env = os.environ.get("GENBAB_BENCHMARKS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "benchmarks")
    for c in candidates:
        if c.is_dir():
            return c
    return None


REQUIRE_ALL = "GENBAB_REQUIRE_ALL"
_required_skips: list[tuple[str, str]] = []  # (node id, reason) of this session's skips not marked optional


def require_all() -> bool:
    """Whether this run refuses skips (``GENBAB_REQUIRE_ALL`` set, and not to ``0``)."""
    return os.environ.get(REQUIRE_ALL, "").strip() not in ("", "0")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_configure(config) -> None:
    _required_skips.clear()  # (the ``optional`` marker is declared in pyproject.toml)


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and "optional" not in report.keywords:
        _required_skips.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report) -> None:
    if report.skipped:  # a whole module (or class) skipped at collection: none of its tests ran
        _required_skips.append((report.nodeid or "<collection>", _skip_reason(report)))


def pytest_sessionfinish(session, exitstatus) -> None:
    if require_all() and _required_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not (require_all() and _required_skips):
        return
    tr = terminalreporter
    tr.write_sep("=", f"{len(_required_skips)} required test(s) skipped with {REQUIRE_ALL}=1: the run fails",
                 red=True, bold=True)
    for nodeid, reason in _required_skips:
        tr.write_line(f"SKIPPED (required) {nodeid} - {reason}", red=True)
    tr.write_line("(mark a test @pytest.mark.optional only if it may skip in CI, e.g. it needs a CUDA device)")


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
