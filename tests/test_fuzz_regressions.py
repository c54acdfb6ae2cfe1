"""Regressions found by ``benchmarks/fuzz.py``: each hostile input ends in a one-line GenbabError."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

import genbab
from genbab.errors import ModelError, SpecError
from genbab.spec.vnnlib import parse_vnnlib_file, parse_vnnlib_text
from genbab.spec.vnnlib2 import QueryError, is_vnnlib2, read_query_text

SPECS = Path(__file__).resolve().parent.parent / "specs"
HEADER = ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
          "(assert (>= X_0 -1))\n(assert (<= X_0 1))\n")
V2_HEADER = ("(vnnlib-version <2.0>)\n(declare-network N\n  (declare-input X float32 [{n}])\n"
             "  (declare-output Y float32 [{m}])\n)\n(assert (and (>= X[0] 0.0) (<= X[0] 1.0)))\n")


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert text and "\n" not in text
    return text


# -- VNN-LIB 1.0 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("formula", ["(<= (* 1e300 1e300 Y_0) 1)", "(<= Y_0 (* 1e200 1e200))", "(<= (+ 1e308 1e308) Y_0)",
                                     "(<= (- (* 1e308 Y_0) (* -1e308 Y_0)) 0)", "(>= X_0 (* 1e308 10))",
                                     "(<= (* 1e300 1e300 X_0) 1)"])
def test_vnnlib1_arithmetic_overflow_is_refused(formula: str) -> None:
    """Was: accepted, with an inf/nan row in C or d, or an input bound silently rounded (1/inf = 0)."""
    with pytest.raises(SpecError) as err:
        parse_vnnlib_text(HEADER + f"(assert {formula})\n")
    assert "overflows" in one_line(err)


def test_vnnlib1_output_tensor_too_large_is_refused() -> None:
    """Was: MemoryError (a 15 GiB C) for a far output index and a few hundred cases."""
    alts = " ".join(f"(<= Y_0 {i})" for i in range(200))
    text = ("(declare-const X_0 Real)\n(declare-const Y_9999999 Real)\n(declare-const Y_0 Real)\n"
            f"(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (or {alts}))\n")
    with pytest.raises(SpecError) as err:
        parse_vnnlib_text(text)
    assert "too large" in one_line(err)


def test_vnnlib1_file_name_too_long_is_a_spec_error(tmp_path: Path) -> None:
    """Was: OSError (ENAMETOOLONG) from Path.exists()."""
    with pytest.raises(SpecError) as err:
        parse_vnnlib_file(tmp_path / ("s" * 300 + ".vnnlib"))
    assert "too long" in one_line(err)


# -- VNN-LIB 2.0 ----------------------------------------------------------------------------------
def test_vnnlib2_file_name_too_long_is_a_spec_error(tmp_path: Path) -> None:
    """Was: OSError (ENAMETOOLONG) from Path.exists() in read_query_text, through load_spec."""
    path = tmp_path / ("s" * 300 + ".vnnlib")
    with pytest.raises(QueryError):
        read_query_text(path)
    assert is_vnnlib2(path) is False
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    one_line(err)


def test_vnnlib2_arithmetic_overflow_is_refused(tmp_path: Path) -> None:
    """Was: accepted with an infinite coefficient in C (1e186 * 1e186)."""
    big = "1" + "0" * 186 + ".0"
    path = tmp_path / "q.vnnlib"
    path.write_text(V2_HEADER.format(n=1, m=2) + f"(assert (<= (* {big} {big} Y[0]) 1.0))\n")
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    assert "overflows" in one_line(err)


def test_vnnlib2_number_out_of_range_names_the_problem(tmp_path: Path) -> None:
    """Was: the bare C++ message 'stod'."""
    path = tmp_path / "q.vnnlib"
    path.write_text(V2_HEADER.format(n=1, m=2) + f"(assert (<= Y[0] 1{'0' * 320}.0))\n")
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    assert "out of range" in one_line(err)


@pytest.mark.parametrize("n, m", [(10**9, 2), (1, 10**9)])
def test_vnnlib2_huge_declaration_is_refused_before_allocating(tmp_path: Path, n: int, m: int) -> None:
    """Was: an 8 GB torch.full for the input box (or C), out of memory on most machines."""
    path = tmp_path / "q.vnnlib"
    path.write_text(V2_HEADER.format(n=n, m=m) + "(assert (<= Y[0] 1.0))\n")
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    assert "elements" in one_line(err)


# -- ONNX -----------------------------------------------------------------------------------------
def _toy(tmp_path: Path, edit) -> Path:
    model = onnx.load(str(SPECS / "toy_mlp.onnx"))
    edit(model)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.mark.parametrize("version", [2**40, 2**31])
def test_onnx_opset_version_out_of_range_is_a_model_error(tmp_path: Path, version: int) -> None:
    """Was: TypeError from onnx's get_schema (a bit flip in opset_import.version)."""
    def edit(model):
        model.opset_import[0].version = version

    with pytest.raises(ModelError) as err:
        genbab.load_model(_toy(tmp_path, edit))
    assert "version" in one_line(err)


def test_onnx_tensor_defined_twice_is_a_model_error(tmp_path: Path) -> None:
    """Was: accepted (one of the two definitions silently won; onnxruntime refuses the model)."""
    def edit(model):
        first = model.graph.node[0]
        model.graph.node.append(onnx.helper.make_node("Identity", [first.input[0]], [first.output[0]]))

    with pytest.raises(ModelError) as err:
        genbab.load_model(_toy(tmp_path, edit))
    assert "defined twice" in one_line(err)


def test_onnx_dangling_edge_names_the_tensor(tmp_path: Path) -> None:
    """Was: 'cannot translate model (RuntimeError: Got unexpected input value type (ValueType.UNKNOWN))'."""
    def edit(model):
        model.graph.node[0].input[0] = "ghost"

    with pytest.raises(ModelError) as err:
        genbab.load_model(_toy(tmp_path, edit))
    assert "'ghost', which nothing defines" in one_line(err)


def test_onnx_output_not_computed_names_it(tmp_path: Path) -> None:
    """Was: 'cannot translate model (KeyError: ...)'."""
    def edit(model):
        model.graph.output[0].name = "nowhere"

    with pytest.raises(ModelError) as err:
        genbab.load_model(_toy(tmp_path, edit))
    assert "'nowhere' is not computed" in one_line(err)


def test_onnx_name_with_invalid_utf8_is_a_model_error(tmp_path: Path) -> None:
    """Was: TypeError from onnx's get_schema (protobuf hands out an op_type that is not UTF-8 as bytes)."""
    data = (SPECS / "toy_mlp.onnx").read_bytes()
    op = next(n.op_type for n in onnx.load(str(SPECS / "toy_mlp.onnx")).graph.node).encode()
    path = tmp_path / "m.onnx"
    path.write_bytes(data.replace(op, op[:1] + b"\xe9" + op[2:]))
    with pytest.raises(ModelError) as err:
        genbab.load_model(path)
    assert "not valid UTF-8" in one_line(err)


@pytest.mark.parametrize("dims", [[1, 10**12], [2] * 40])
def test_onnx_huge_input_is_refused_before_allocating(tmp_path: Path, dims: list[int]) -> None:
    """Was: a probe run and a torch evaluation that try to allocate the input (terabytes here; with
    a few gigabytes they succeed, slowly)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(ModelError) as err:
        genbab.load_model(path)
    assert "elements per sample" in one_line(err)


def test_vnnlib1_deep_nesting_is_refused() -> None:
    """Was: accepted after seconds of work (20 s at 10^6 levels)."""
    n = 150_000
    with pytest.raises(SpecError) as err:
        parse_vnnlib_text(HEADER + "(assert " + "(and " * n + "(<= Y_0 1)" + ")" * n + ")\n")
    assert "nested more than" in one_line(err)


def test_vnnlib1_deep_and_or_alternation_is_refused() -> None:
    """Was: accepted; the DNF of alternating and/or grows quadratically with the depth."""
    n = 1_002
    body = "".join(f"({'or' if i % 2 == 0 else 'and'} (<= Y_0 {i}) " for i in range(n)) + "(<= Y_0 -1)" + ")" * n
    with pytest.raises(SpecError) as err:
        parse_vnnlib_text(HEADER + f"(assert {body})\n")
    assert "alternate" in one_line(err)


def test_vnnlib1_nested_or_takes_linear_time() -> None:
    """Was: quadratic (each level copied the cases below it): over a minute at 100 000 levels."""
    import time

    n = 60_000
    start = time.perf_counter()
    spec = parse_vnnlib_text(HEADER + "(assert " + "(or (<= Y_0 1) " * n + "(<= Y_0 2)" + ")" * n + ")\n")
    assert spec.n_cases == n + 1
    assert torch.equal(spec.d[:3, 0], torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    assert time.perf_counter() - start < 8.0


def test_vnnlib2_deep_nesting_is_refused(tmp_path: Path) -> None:
    """Was: a segmentation fault inside the vnnlib package's C++ parser (100 000 levels)."""
    n = 100_000
    path = tmp_path / "q.vnnlib"
    path.write_text(V2_HEADER.format(n=1, m=2) + "(assert " + "(and " * n + "(<= Y[0] 1.0)" + ")" * n + ")\n")
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    assert "nested" in one_line(err)


def test_vnnlib2_parser_report_is_summarised(tmp_path: Path) -> None:
    """Was: the parser's whole JSON report squeezed on one line (hundreds of characters)."""
    path = tmp_path / "q.vnnlib"
    path.write_text(V2_HEADER.replace("[{n}]", "[0]").format(m=2) + "(assert (<= (* 2 Y[0]) 1.0))\n")
    with pytest.raises(SpecError) as err:
        genbab.load_spec(path)
    text = one_line(err)
    assert "line 3: Failed to parse dimension" in text and "more error" in text and "error_count" not in text
