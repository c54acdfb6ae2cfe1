"""The ``genbab`` command line: verdicts, result files, JSON, exit codes and clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import genbab
from conftest import BENCHMARKS, needs_benchmarks

SPECS = Path(genbab.__file__).resolve().parent.parent / "specs"
MODEL = SPECS / "toy_mlp.onnx"


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "GENBAB_DEBUG": ""}
    return subprocess.run([sys.executable, "-m", "genbab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def parse_witness(text: str) -> dict[str, float]:
    body = text.split("\n", 1)[1].replace("(", " ").replace(")", " ").split()
    return {body[i]: float(body[i + 1]) for i in range(0, len(body), 2)}


def test_sat_writes_result_file_and_json(tmp_path: Path) -> None:
    res, js = tmp_path / "out.txt", tmp_path / "out.json"
    proc = run_cli("verify", str(MODEL), str(SPECS / "toy_mlp_unsafe.vnnlib"), "--timeout", "30",
                   "--results-file", str(res), "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sat")
    text = res.read_text()
    assert text.startswith("sat\n((X_0 ")
    values = parse_witness(text)
    x = np.array([[values["X_0"], values["X_1"]]], dtype=np.float32)
    assert np.all(x >= -1) and np.all(x <= 1)
    sess = ort.InferenceSession(MODEL.read_bytes(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0][0]
    assert y[0] >= y[1]  # the property's unsafe set: Y_0 >= Y_1
    np.testing.assert_array_equal(y, [values["Y_0"], values["Y_1"], values["Y_2"]])
    report = json.loads(js.read_text())
    assert report["status"] == "sat" and len(report["witness"]["x"]) == 2
    assert report["stats"]["attack"]["points"] > 0 and "load_s" in report["stats"] and report["time_s"] > 0


def test_property_that_holds_is_proved(tmp_path: Path) -> None:
    js, res = tmp_path / "r.json", tmp_path / "r.txt"
    proc = run_cli("verify", str(MODEL), str(SPECS / "toy_mlp_robust.vnnlib"), "--timeout", "60",
                   "--json", str(js), "--results-file", str(res))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(js.read_text())
    assert report["status"] == "unsat" and res.read_text() == "unsat\n"
    assert report["stats"]["bounds"]["proved_cases"] == 1 and report["stats"]["bounds"]["worst_case_bound"] > 0


@needs_benchmarks
def test_timeout_is_honoured(tmp_path: Path) -> None:
    """An instance neither attack nor bounds settle quickly stops within 2 s of its timeout."""
    folder = BENCHMARKS / "vit"
    js = tmp_path / "r.json"
    proc = run_cli("verify", str(folder / "onnx/pgd_2_3_16.onnx.gz"), str(folder / "vnnlib/pgd_2_3_16_4021.vnnlib.gz"),
                   "--timeout", "4", "--json", str(js))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(js.read_text())
    assert report["status"] == "timeout"
    assert report["time_s"] <= 4 + 2


@pytest.mark.parametrize("content", [b"", b"not an onnx model at all \x00\xff", b"\x1f\x8bbroken"])
def test_bad_model_exits_2_with_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    res = tmp_path / "r.txt"
    proc = run_cli("verify", str(bad), str(SPECS / "toy_mlp_unsafe.vnnlib"), "--results-file", str(res))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error:")
    assert res.read_text() == "error\n"


@pytest.mark.parametrize("content", ["", "(declare-const X_0 Real)\n(assert (<= X_0 ", "\x00\x01garbage"])
def test_bad_spec_exits_2_with_one_line(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text(content)
    proc = run_cli("verify", str(MODEL), str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_spec_that_does_not_fit_the_model(tmp_path: Path) -> None:
    spec = tmp_path / "three.vnnlib"
    lines = [f"(declare-const X_{i} Real)" for i in range(3)] + ["(declare-const Y_0 Real)"]
    lines += [f"(assert (>= X_{i} 0))\n(assert (<= X_{i} 1))" for i in range(3)] + ["(assert (>= Y_0 0))"]
    spec.write_text("\n".join(lines))
    proc = run_cli("verify", str(MODEL), str(spec))
    assert proc.returncode == 2 and "3 inputs" in proc.stderr


def test_missing_files_exit_2(tmp_path: Path) -> None:
    proc = run_cli("verify", str(tmp_path / "none.onnx"), str(SPECS / "toy_mlp_unsafe.vnnlib"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@needs_benchmarks
def test_real_gzipped_instance_answers_sat(tmp_path: Path) -> None:
    """A real gzipped benchmark pair runs through the CLI and answers sat with a result file."""
    folder = BENCHMARKS / "dist_shift"
    res = tmp_path / "r.txt"
    proc = run_cli("verify", str(folder / "onnx/mnist_concat.onnx.gz"),
                   str(folder / "vnnlib/index1561_delta0.13.vnnlib.gz"), "--timeout", "60", "--results-file", str(res))
    assert proc.returncode == 0, proc.stderr
    assert res.read_text().startswith("sat\n")


def assert_one_line(proc) -> None:
    """stderr is exactly one non-empty line and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("option", ["--results-file", "--json"])
@pytest.mark.parametrize("where", ["missing/out.txt", "file/out.txt", "."])
def test_unwritable_output_path_exits_2_before_work(tmp_path: Path, option: str, where: str) -> None:
    """An output path in a missing directory, under a regular file or naming a directory is refused first."""
    (tmp_path / "file").write_text("")
    proc = run_cli("verify", str(MODEL), str(SPECS / "toy_mlp_unsafe.vnnlib"), "--timeout", "10",
                   option, str(tmp_path / where), timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc)
    assert proc.stderr.startswith("error:") and option in proc.stderr


@pytest.mark.parametrize("args", [["--timeout", "nan"], ["--timeout", "-1"], ["--seed", str(2**70)],
                                  ["--seed", "-1"], ["--device", "tpu"], ["--bogus"]])
def test_bad_option_values_are_one_line_usage_errors(args: list[str]) -> None:
    """Bad option values exit 2 with one ``error:`` line instead of click's usage block."""
    proc = run_cli("verify", str(MODEL), str(SPECS / "toy_mlp_unsafe.vnnlib"), *args, timeout=30)
    assert proc.returncode == 2
    assert_one_line(proc)
    assert proc.stderr.startswith("error:")


def test_missing_argument_is_one_line() -> None:
    """A missing argument is one line, exit 2; --help and --version still exit 0."""
    proc = run_cli("verify", str(MODEL), timeout=30)
    assert proc.returncode == 2 and "SPEC" in proc.stderr
    assert_one_line(proc)
    assert run_cli("--version", timeout=30).returncode == 0
    helped = run_cli("verify", "--help", timeout=30)
    assert helped.returncode == 0 and "--timeout" in helped.stdout


def test_infinite_timeout_means_no_limit(tmp_path: Path) -> None:
    """``--timeout inf`` (or 1e12) runs to a verdict instead of overflowing a wait."""
    for value in ("inf", "1e12"):
        proc = run_cli("verify", str(MODEL), str(SPECS / "toy_mlp_unsafe.vnnlib"), "--timeout", value, "--quiet",
                       timeout=60)
        assert proc.returncode == 0 and proc.stdout.startswith("sat"), proc.stderr


@pytest.mark.parametrize("sig, code, message", [("SIGINT", 130, "interrupted (SIGINT)"),
                                                ("SIGTERM", 143, "terminated (SIGTERM)")])
def test_signal_writes_timeout_and_exits_conventionally(tmp_path: Path, sig: str, code: int, message: str) -> None:
    """SIGINT/SIGTERM mid-run: results file says timeout, one line on stderr, exit 130/143."""
    import signal
    import time

    res = tmp_path / "r.txt"
    env = {**os.environ, "GENBAB_DEBUG": ""}
    proc = subprocess.Popen([sys.executable, "-m", "genbab.cli", "verify", str(MODEL),
                             str(SPECS / "toy_mlp_robust.vnnlib"), "--no-bounds", "--timeout", "100",
                             "--results-file", str(res)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    first = proc.stderr.readline()  # the first progress line: the (slow) imports are done, the attack runs
    assert "attack" in first, first
    time.sleep(1)
    assert proc.poll() is None, "the attack-only run ended before the signal"
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == message and "Traceback" not in err and "terminate called" not in err, err
    assert res.read_text().splitlines()[0] == "timeout"


@pytest.mark.parametrize("content", [None, "a.onnx,a.vnnlib\n", "a.onnx,a.vnnlib,soon\n"])
def test_bench_bad_instance_list_exits_2(tmp_path: Path, content: str | None) -> None:
    """A benchmark folder without instances.csv or with a malformed row exits 2 (1 means a wrong answer)."""
    folder = tmp_path / "b"
    folder.mkdir()
    if content is not None:
        (folder / "instances.csv").write_text(content)
    proc = run_cli("bench", str(folder), "--out", str(tmp_path / "r.csv"), timeout=30)
    assert proc.returncode == 2
    assert_one_line(proc)
    assert proc.stderr.startswith("error:")


def test_unbounded_input_gets_the_attack_alone(tmp_path: Path) -> None:
    """An input the property leaves unbounded may take any value: a witness is searched on growing
    finite ranges (here it needs X_1 >= 49) and checked on the exact property; there is never a
    proof (``unknown``, with the reason in the JSON report)."""
    from onnx import TensorProto, helper, save

    graph = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(tmp_path / "sum.onnx"))  # y = x0 + x1
    spec, res, js = tmp_path / "p.vnnlib", tmp_path / "r.txt", tmp_path / "r.json"
    head = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n"
    spec.write_text(head + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (>= Y_0 50))\n")
    proc = run_cli("verify", str(tmp_path / "sum.onnx"), str(spec), "--timeout", "30", "--results-file", str(res),
                   "--json", str(js))
    assert proc.returncode == 0 and proc.stdout.startswith("sat"), proc.stdout + proc.stderr
    w = parse_witness(res.read_text())
    assert 0 <= w["X_0"] <= 1 and w["X_1"] >= 0 and w["Y_0"] >= 50
    assert json.loads(js.read_text())["stats"]["reason"] == "input X_1 (model input [0,1]) is unbounded: only an attack was run"
    spec.write_text(head + "(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (>= X_1 0))\n(assert (<= Y_0 -1))\n")
    proc = run_cli("verify", str(tmp_path / "sum.onnx"), str(spec), "--timeout", "30", "--json", str(js))
    report = json.loads(js.read_text())
    assert proc.returncode == 0 and proc.stdout.startswith("unknown"), proc.stdout + proc.stderr
    assert report["status"] == "unknown" and "X_1 (model input [0,1]) is unbounded" in report["stats"]["reason"]
    assert "bounds" not in report["stats"] and len(report["stats"]["attack_unbounded"]) == 5


def test_bab_options_set_the_config_and_bad_ones_exit_2(tmp_path: Path) -> None:
    """``--bab-option KEY=VALUE``: a known field with a value of its type runs (the verdict is
    unchanged); an unknown key or a bad value is one error line, exit 2, before any work."""
    model, spec = str(SPECS / "toy_mlp.onnx"), str(SPECS / "toy_mlp_robust.vnnlib")
    ok = run_cli("verify", model, spec, "--timeout", "30", "--quiet", "--bab-option", "shared_frontier=false",
                 "--bab-option", "input_coeff_floor=0", "--bab-option", "branching=babsr")
    assert ok.returncode == 0 and ok.stdout.split()[0] == "unsat", ok.stdout + ok.stderr
    for bad, words in (("nope=1", "expected KEY=VALUE"), ("shared_frontier=maybe", "takes a bool"),
                       ("batch_size=x", "takes an int"), ("batch_size", "expected KEY=VALUE")):
        proc = run_cli("verify", model, spec, "--timeout", "30", "--quiet", "--bab-option", bad)
        assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
