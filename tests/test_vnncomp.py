"""The VNN-COMP scripts in ``vnncomp/``: argument checks, results files, per-category settings."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from genbab.bench.categories import CategorySettings, load_categories, settings_for

ROOT = Path(__file__).resolve().parent.parent
VNNCOMP = ROOT / "vnncomp"
TOY = ROOT / "specs" / "toy_mlp.onnx"
TOY_SAT = ROOT / "specs" / "toy_mlp_unsafe.vnnlib"
needs_venv = pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(),
                                reason="the scripts run .venv/bin/python (make install)")


def script(name: str, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(VNNCOMP / name), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name,args", [
    ("install_tool.sh", []), ("install_tool.sh", ["v2"]),
    ("prepare_instance.sh", ["v1", "cat", "m.onnx"]), ("prepare_instance.sh", ["v0", "cat", "m.onnx", "p.vnnlib"]),
    ("run_instance.sh", ["v1", "cat", "m.onnx", "p.vnnlib", "out.txt"]),
    ("run_instance.sh", ["v2", "cat", "m.onnx", "p.vnnlib", "out.txt", "10"]),
])
def test_scripts_reject_wrong_arguments_and_versions(name: str, args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(VNNCOMP / name), *args], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 1 and ("usage" in proc.stderr or "expected version" in proc.stderr)
    assert not (tmp_path / "out.txt").exists()


def test_run_instance_rejects_a_bad_timeout_but_leaves_a_results_file(tmp_path: Path) -> None:
    res = tmp_path / "out.txt"
    proc = script("run_instance.sh", "v1", "cat", str(TOY), str(TOY_SAT), str(res), "soon")
    assert proc.returncode == 1 and res.read_text() == "error\n"


@needs_venv
def test_prepare_instance_exits_zero() -> None:
    proc = script("prepare_instance.sh", "v1", "test", str(TOY), str(TOY_SAT))
    assert proc.returncode == 0, proc.stderr


@needs_venv
def test_run_instance_writes_sat_with_witness_then_error_for_a_missing_model(tmp_path: Path) -> None:
    res = tmp_path / "out.txt"
    res.write_text("stale\n")
    proc = script("run_instance.sh", "v1", "test", str(TOY), str(TOY_SAT), str(res), "30")
    assert proc.returncode == 0, proc.stderr
    text = res.read_text()
    assert text.startswith("sat\n((X_0 ") and "(Y_2 " in text
    assert "--timeout 29.000" in proc.stdout  # the default margin of categories.toml: 1 s
    proc = script("run_instance.sh", "v1", "test", str(tmp_path / "missing.onnx"), str(TOY_SAT), str(res), "30")
    assert proc.returncode == 0 and res.read_text() == "error\n"


@needs_venv
def test_run_instance_writes_timeout_when_the_verifier_is_killed(tmp_path: Path) -> None:
    toml = tmp_path / "categories.toml"
    toml.write_text("[default]\nkill_grace_s = 0.0\n")  # killed at the timeout itself, during start-up
    res = tmp_path / "out.txt"
    proc = script("run_instance.sh", "v1", "test", str(TOY), str(TOY_SAT), str(res), "0.3",
                  env={"GENBAB_CATEGORIES": str(toml)})
    assert proc.returncode == 0 and res.read_text() == "timeout\n"


def test_categories_toml_is_valid_for_every_category() -> None:
    config = load_categories(VNNCOMP / "categories.toml")
    assert "default" in config
    for name in [*config.get("categories", {}), "not-a-listed-category"]:
        s = settings_for(config, name)
        args = s.verify_args(100.0)
        assert args[:2] == ["--timeout", f"{100.0 - s.timeout_margin_s:.3f}"] and "--quiet" in args
        assert s.kill_after(100.0) > 100.0
    assert settings_for(config, "VIT") == settings_for(config, "vit")
    assert CategorySettings(timeout_margin_s=3.0, min_timeout_s=1.0).verify_timeout(2.0) == 1.0
    with pytest.raises(ValueError, match="unknown key"):
        settings_for({"default": {"timout": 3}}, "x")
    with pytest.raises(ValueError, match="device"):
        settings_for({"default": {"device": "tpu"}}, "x")


# --- VNN-LIB 2.0: `genbab vnnlib2` (standard chapter 5) and the vnnlib-satisfactory suite ---

QUERY_V2 = """(vnnlib-version <2.0>)
(declare-network N
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,3])
)
(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1.0)))
(assert (and (>= X[0,1] -1.0) (<= X[0,1] 1.0)))
(assert {output})
"""


def vnnlib2(*args: str):
    from click.testing import CliRunner

    from genbab.cli import main

    return CliRunner().invoke(main, ["vnnlib2", *args])


def test_vnnlib2_verify_answers_sat_with_assignment_and_unsat(tmp_path: Path) -> None:
    pytest.importorskip("vnnlib")
    sat_q, unsat_q = tmp_path / "sat.vnnlib", tmp_path / "unsat.vnnlib"
    sat_q.write_text(QUERY_V2.format(output="(or (>= Y[0,0] Y[0,1]) (>= Y[0,2] 100.0))"))
    unsat_q.write_text(QUERY_V2.format(output="(<= Y[0,2] 0.0)"))  # as toy_mlp_robust.vnnlib: unreachable
    res = vnnlib2("verify", str(sat_q), "--network", f"N={TOY}", "--timeout", "60")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "sat" and lines[1] == "X float32 [1,2]" and lines[4] == "Y float32 [1,3]" and len(lines) == 8
    x, y = [float(v) for v in lines[2:4]], [float(v) for v in lines[5:8]]
    assert all(-1.0 <= v <= 1.0 for v in x) and y[0] >= y[1]
    res = vnnlib2("verify", str(unsat_q), "--network", f"N={TOY}", "--timeout", "60")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    res = vnnlib2("verify", str(unsat_q), "--network", f"M={TOY}")
    assert res.exit_code == 2 and "network 'N'" in res.output


def test_vnnlib2_query_keeps_and_and_or_structure_and_strictness(tmp_path: Path) -> None:
    pytest.importorskip("vnnlib")
    from genbab.spec.vnnlib2 import load_query, search_spec, witness_satisfies

    q = tmp_path / "q.vnnlib"
    q.write_text(QUERY_V2.replace("(>= X[0,0] -1.0)", "(> X[0,0] -1.0)").format(
        output="(or (< Y[0,0] Y[0,1]) (and (<= Y[0,2] 2.0) (== Y[0,1] 1.0)))"))
    query = load_query(q)
    spec = query.spec  # two asserts that are each an `and` stay ANDed: one box, two output cases
    assert spec.n_cases == 2 and spec.lower.tolist() == [[-1.0, -1.0]] * 2 and spec.upper.tolist() == [[1.0, 1.0]] * 2
    assert query.strict.lower[:, 0].all() and not query.strict.upper.any()
    assert query.strict.rows.tolist() == [[True, False, False], [False, False, False]]
    loose = search_spec(query)
    assert loose.d[0, 0] == spec.d[0, 0] and loose.d[1, 0] > spec.d[1, 0]  # only non-strict rows loosen
    assert witness_satisfies(query, 1, [0.0, 0.0], [0.0, 1.0, 2.0])  # on the non-strict boundary: fine
    assert not witness_satisfies(query, 0, [0.0, 0.0], [1.0, 1.0, 0.0])  # Y0 < Y1 fails at equality
    assert not witness_satisfies(query, 1, [-1.0, 0.0], [0.0, 1.0, 2.0])  # X0 > -1 is strict
    q.write_text(QUERY_V2.format(output="(< Y[0,0] Y[0,0])"))
    assert load_query(q).spec.n_cases == 0  # a false comparison: the unsafe set is empty


def test_vnnlib2_supports_reports_each_capability() -> None:
    ops = vnnlib2("supports", "--onnx-operators")
    assert ops.exit_code == 0 and {"Sigmoid", "MatMul", "Softmax", "LSTM"} <= set(ops.output.split())
    assert vnnlib2("supports", "--vnnlib-versions").output == "2.0\n2.0\n"
    low, high = vnnlib2("supports", "--onnx-opset-versions").output.split()
    assert 1 <= int(low) <= int(high)
    assert vnnlib2("supports", "--serialise-assignments").output == "true\n"
    assert vnnlib2("supports", "--multiple-network-theories").output == "SNET\nMNET\nMENET\nMINET\n"
    assert vnnlib2("supports").exit_code != 0 and vnnlib2("supports", "--hidden-node-theories", "--vnnlib-versions").exit_code != 0
    assert vnnlib2("--name").output == "genbab\n"


@needs_venv
def test_vnnlib_satisfactory_suite_runs_against_the_solver(tmp_path: Path) -> None:
    """The real suite, end to end, on a few categories (the full run takes ~20 min; see the README)."""
    pytest.importorskip("vnntest")
    exe = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "vnnlib-satisfactory"
    if not exe.exists():
        exe = ROOT / ".venv" / "bin" / "vnnlib-satisfactory"
    proc = subprocess.run([str(exe), "run", "--solver", str(VNNCOMP / "vnnlib2_solver"), "--test", "arithmetic_outc",
                           "--timeout", "60", "--no-verbose"], capture_output=True, text=True, timeout=400, cwd=tmp_path)
    # the summary line, e.g. "2/2 passed, 0 failed, 0 suspect, 0 errored, 0 skipped" (read from stdout:
    # vnnlib-satisfactory 1.0.1 cannot write report.json after a test that timed out)
    summary = re.search(r"(\d+)/(\d+) passed, (\d+) failed, (\d+) suspect, (\d+) errored, (\d+) skipped", proc.stdout)
    assert summary is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    passed, total, failed = (int(summary.group(i)) for i in (1, 2, 3))
    assert total > 0 and failed == 0 and passed >= 1, proc.stdout[-3000:]


def test_genbab_verify_reads_vnnlib2_queries(tmp_path) -> None:
    """``genbab.load_spec`` (hence ``genbab verify``) routes VNN-LIB 2.0 queries to the 2.0 parser."""
    from pathlib import Path

    import genbab
    from genbab.errors import SpecError

    model = Path(genbab.__file__).resolve().parent.parent / "specs" / "toy_mlp.onnx"
    header = ("(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [1, 2])\n"
              "  (declare-output Y float32 [1, 3])\n)\n")
    box = "(assert (and (>= X[0,0] -1.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))\n"
    query = tmp_path / "q.vnnlib"
    query.write_text(header + box + "(assert (>= Y[0,0] Y[0,1]))\n")
    spec = genbab.load_spec(query)
    assert spec.n_inputs == 2 and spec.n_outputs == 3
    assert genbab.verify(model, spec, timeout=30).status == "sat"
    strict = tmp_path / "strict.vnnlib"
    strict.write_text(header + box.replace(">= X[0,0]", "> X[0,0]") + "(assert (>= Y[0,0] Y[0,1]))\n")
    try:
        genbab.load_spec(strict)
        raise AssertionError("strict input bounds must be refused")
    except SpecError as err:
        assert "strict input bounds" in str(err)
