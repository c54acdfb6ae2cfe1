"""Skips are listed with their reasons, and with ``GENBAB_REQUIRE_ALL=1`` (CI) they fail the run.

Each case runs pytest in a subprocess on a small project made of this repository's
``tests/conftest.py`` and ``pyproject.toml`` and a few tests that pass, skip, skip while marked
``optional``, or xfail, plus a module skipped at collection (a missing import).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TESTS = '''
import pytest


def test_runs():
    pass


def test_required():
    pytest.skip("needs the frobnicator")


@pytest.mark.optional
def test_optional():
    pytest.skip("needs a CUDA device")


@pytest.mark.xfail(reason="a known wrong answer")
def test_known():
    assert False
'''

MODULE_SKIP = '''
import pytest

pytest.importorskip("genbab_no_such_module", reason="genbab_no_such_module does not import")


def test_never_collected():
    pass
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "tests" / "conftest.py")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "tests" / "test_inner.py").write_text(TESTS)
    (tmp_path / "tests" / "test_module_skip.py").write_text(MODULE_SKIP)
    return tmp_path


def run(project: Path, require: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GENBAB_REQUIRE_ALL"}  # CI sets it for this run
    if require is not None:
        env["GENBAB_REQUIRE_ALL"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)


def test_without_the_variable_skips_are_listed_with_reasons_and_pass(project: Path) -> None:
    for require in (None, "0"):
        proc = run(project, require)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        # the summary of pyproject.toml's addopts names each skip and its reason
        assert "SKIPPED [1] tests/test_inner.py:" in out and "needs the frobnicator" in out, out
        assert "needs a CUDA device" in out and "genbab_no_such_module does not import" in out, out
        assert "required test(s) skipped" not in out, out


def test_with_the_variable_a_skipped_required_test_fails_the_run_and_is_named(project: Path) -> None:
    proc = run(project, "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    section = out[out.index("2 required test(s) skipped with GENBAB_REQUIRE_ALL=1"):out.index("short test summary")]
    assert "SKIPPED (required) tests/test_inner.py::test_required - needs the frobnicator" in section, out
    assert "SKIPPED (required) tests/test_module_skip.py - genbab_no_such_module does not import" in section, out
    assert "test_optional" not in section and "test_known" not in section, out  # optional skips, xfails: fine


def test_with_the_variable_optional_skips_and_xfails_still_pass(project: Path) -> None:
    proc = run(project, "1", "tests/test_inner.py", "-k", "not required")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "1 passed, 1 skipped, 1 deselected, 1 xfailed" in out, out
    assert "required test(s) skipped" not in out, out


def test_with_the_variable_a_run_of_only_skips_fails(project: Path) -> None:
    proc = run(project, "1", "tests/test_module_skip.py")  # nothing collected: exit 5 would hide the skip
    assert proc.returncode == 1, proc.stdout + proc.stderr


def test_ci_requires_every_test() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "export GENBAB_REQUIRE_ALL=1" in ci and ci.index("GENBAB_REQUIRE_ALL=1") < ci.index("make test")
