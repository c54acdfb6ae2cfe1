"""``genbab bench``: results.csv, robustness (missing / corrupt / unsupported / out of time), witness
replay, scoring, resume, cactus plot, and the Ray backend (skipped when ray is not installed)."""

from __future__ import annotations

import csv
import gzip
import io
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from click.testing import CliRunner
from rich.console import Console

import genbab
from conftest import BENCHMARKS
from genbab.bench.errors import BenchError
from genbab.bench.execute import verdict_of
from genbab.bench.replay import parse_witness, replay_witness
from genbab.bench.results_csv import Row, append_row, read_rows
from genbab.bench.runner import BenchConfig, run_bench
from genbab.bench.scoring import Tally, mark
from genbab.cli import main

SPECS = Path(genbab.__file__).resolve().parent.parent / "specs"
TOY = SPECS / "toy_mlp.onnx"
TOY_SAT = SPECS / "toy_mlp_unsafe.vnnlib"
VIT_MODEL = None if BENCHMARKS is None else BENCHMARKS / "vit" / "onnx" / "pgd_2_3_16.onnx.gz"
VIT_SPEC = None if BENCHMARKS is None else BENCHMARKS / "vit" / "vnnlib" / "pgd_2_3_16_4021.vnnlib.gz"
SMALL_PROPERTY = """(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(assert (<= X_0 1))
(assert (>= X_0 -1))
(assert (<= X_1 1))
(assert (>= X_1 -1))
(assert (>= Y_0 Y_1))
"""


def unsupported_model(path: Path) -> None:
    """A 2-in/2-out model made of one node of a custom domain: neither genbab nor onnxruntime
    runs it (a model only onnxruntime runs gets the attack alone: tests/test_falsification.py)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                      helper.make_opsetid("com.example", 1)]), path)


def quiet_console() -> Console:
    return Console(file=io.StringIO(), width=200)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_broken_instances_get_error_or_timeout_and_the_run_goes_on(tmp_path: Path) -> None:
    bench = tmp_path / "broken"
    (bench / "onnx").mkdir(parents=True)
    (bench / "vnnlib").mkdir()
    (bench / "onnx" / "corrupt.onnx.gz").write_bytes(gzip.compress(TOY.read_bytes())[:40] + b"\x00garbage")
    unsupported_model(bench / "onnx" / "hardmax.onnx")
    (bench / "vnnlib" / "prop.vnnlib").write_text(SMALL_PROPERTY)
    lines = [
        "onnx/missing.onnx,vnnlib/prop.vnnlib,60",
        f"onnx/corrupt.onnx.gz,{TOY_SAT},60",
        "onnx/hardmax.onnx,vnnlib/prop.vnnlib,60",
    ]
    expected = {"onnx/missing.onnx": "error", "onnx/corrupt.onnx.gz": "error", "onnx/hardmax.onnx": "error"}
    if VIT_MODEL is not None and VIT_MODEL.exists():
        lines.append(f"{VIT_MODEL},{VIT_SPEC},2")  # a hard instance with 2 s: out of time
        expected[str(VIT_MODEL)] = "timeout"
    lines.append(f"{TOY},{TOY_SAT},30")  # after all that, a normal instance still runs
    expected[str(TOY)] = "sat"
    (bench / "instances.csv").write_text("\n".join(lines) + "\n")
    with open(bench / "reference.csv", "w") as fh:
        fh.write("onnx,vnnlib,consensus,abcrown_result,abcrown_time_s\n")
        fh.write(f"{TOY},{TOY_SAT},sat,sat,1.5\n")
        fh.write("onnx/hardmax.onnx,vnnlib/prop.vnnlib,unsat,unsat,2.0\n")

    out = tmp_path / "results.csv"
    plot = None if _no_matplotlib() else tmp_path / "cactus.png"
    config = BenchConfig(out=out, workers=2, grace=3.0, plot=plot)
    report = run_bench([bench], config, quiet_console())

    rows = read_csv(out)
    assert all(len(r) == 6 for r in rows) and len(rows) == len(lines)
    got = {r[1]: r[4] for r in rows}
    assert got == expected
    assert {r[0] for r in rows} == {"broken"} and all(float(r[3]) == 0.0 and float(r[5]) >= 0 for r in rows)
    toy = next(a for a in report.answers if a.row.result == "sat")
    assert toy.witness == "ok" and toy.mark == "correct"
    assert report.score == 10 and report.wrong == 0
    assert plot is None or plot.stat().st_size > 1000
    details = read_csv(tmp_path / "results_details.csv")
    assert details[0][-2:] == ["mark", "score"] and len(details) == len(lines) + 1

    # Resume: nothing is run again, the sat witness is replayed from the kept results file.
    again = run_bench([bench], BenchConfig(out=out), quiet_console())
    assert read_csv(out) == rows
    assert next(a for a in again.answers if a.row.result == "sat").witness == "ok"


def _no_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return True
    return False


def test_plot_without_matplotlib_fails_before_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    bench = tmp_path / "b"
    bench.mkdir()
    (bench / "instances.csv").write_text(f"{TOY},{TOY_SAT},30\n")
    with pytest.raises(BenchError, match="genbab\\[plot\\]"):
        run_bench([bench], BenchConfig(out=tmp_path / "r.csv", plot=tmp_path / "p.png"), quiet_console())
    assert not (tmp_path / "r.csv").exists()


def test_cactus_plot_draws_both_series(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from genbab.bench.plot import cactus_plot, cumulative_times

    assert cumulative_times([3.0, 1.0, 2.0]) == [1.0, 3.0, 6.0]
    cactus_plot({"genbab": [1.0, 2.5], "reference": [0.5, 4.0, 9.0]}, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_skips_rows_already_written_and_survives_a_torn_line(tmp_path: Path) -> None:
    bench = tmp_path / "b"
    bench.mkdir()
    (bench / "instances.csv").write_text(f"{TOY},{TOY_SAT},30\nmissing.onnx,{TOY_SAT},30\n")
    out = tmp_path / "results.csv"
    append_row(out, Row("b", str(TOY), str(TOY_SAT), 0.0, "unknown", 1.25))
    with open(out, "a") as fh:
        fh.write("b,missing.onnx,")  # a write cut short by a crash
    report = run_bench([bench], BenchConfig(out=out), quiet_console())
    rows = read_rows(out)
    assert {(r.onnx, r.result) for r in rows} == {(str(TOY), "unknown"), ("missing.onnx", "error")}
    assert [a.row.result for a in report.answers] == ["unknown", "error"]


def test_cli_bench_limit_and_bad_folder(tmp_path: Path) -> None:
    bench = tmp_path / "b"
    bench.mkdir()
    (bench / "instances.csv").write_text("a.onnx,a.vnnlib,5\nb.onnx,b.vnnlib,5\n")  # missing: no process started
    out = tmp_path / "r.csv"
    result = CliRunner().invoke(main, ["bench", str(bench), "--out", str(out), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert [r[1] for r in read_csv(out)] == ["a.onnx"] and "results:" in result.output
    result = CliRunner().invoke(main, ["bench", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "no instances.csv" in result.output


def test_replay_accepts_genuine_witnesses_and_rejects_tampered_ones() -> None:
    text = "sat\n((X_0 0.0)\n (X_1 0.0)\n (Y_0 1.3139293193817139)\n (Y_1 0.4739193320274353)\n (Y_2 1.4220353364944458))\n"
    xs, ys = parse_witness(text)
    assert xs == {0: 0.0, 1: 0.0} and len(ys) == 3
    good = replay_witness(TOY, TOY_SAT, text)
    assert good.ok, good.reason
    assert not replay_witness(TOY, TOY_SAT, text.replace("(X_0 0.0)", "(X_0 5.0)")).ok  # outside the box
    assert "differ" in replay_witness(TOY, TOY_SAT, text.replace("1.3139293193817139", "9.5")).reason
    assert not replay_witness(TOY, TOY_SAT, "sat\n").ok
    assert not replay_witness(TOY, TOY_SAT, "sat\n((X_0 0.0))").ok  # X_1 missing


def test_marks_and_score() -> None:
    assert mark("sat", "sat", True) == "correct"
    assert mark("sat", "unknown", True) == "correct"
    assert mark("sat", "sat", False) == "wrong"  # a witness that does not replay
    assert mark("sat", "unsat", True) == "wrong"
    assert mark("unsat", "sat", None) == "wrong"
    assert mark("unsat", "unsat", None) == "correct"
    assert mark("unsat", "unknown", None) == "unchecked"
    assert mark("timeout", "sat", None) == "" and mark("error", "unsat", None) == ""
    tally = Tally()
    for result, m in [("sat", "correct"), ("unsat", "wrong"), ("timeout", ""), ("unsat", "unchecked")]:
        tally.add(result, m)
    assert tally.score == 10 - 150 + 10 and "score -130" in tally.line("x", scored=True)


def test_verdicts_and_results_file_spellings() -> None:
    assert verdict_of("sat\n((X_0 1))") == "sat" and verdict_of("UNSAT\n") == "unsat"
    assert verdict_of("violated") == "sat" and verdict_of("holds") == "unsat"
    assert verdict_of("") == "error" and verdict_of("banana\n") == "error"


def test_ray_backend_runs_instances_on_a_local_cluster(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    bench = tmp_path / "toy"
    bench.mkdir()
    (bench / "instances.csv").write_text(f"{TOY},{TOY_SAT},30\n{TOY},{SPECS / 'toy_mlp_robust.vnnlib'},30\n")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = tmp_path / "results.csv"
        report = run_bench([bench], BenchConfig(out=out, ray="auto", task_cpus=1), quiet_console())
    finally:
        ray.shutdown()
    assert sorted(r.result for r in read_rows(out)) == ["sat", "unsat"]
    assert next(a for a in report.answers if a.row.result == "sat").witness == "ok"
