"""VNN-LIB 2.0 queries beyond one network's one input and output: several networks (independent,
``equal-to``, shared inputs), hidden nodes, several inputs/outputs, linear input constraints;
composed into one ONNX model (:mod:`genbab.model.compose`) and verified end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("vnnlib")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

HEADER = "(vnnlib-version <2.0>)\n"


def run_genbab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genbab.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "GENBAB_DEBUG": ""})


def save(model, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_model(nodes, inputs, outputs, inits=(), opset: int = 17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(np.asarray(v, np.float32), k)
                                                             for k, v in dict(inits).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp(w1, w2, opset: int = 17):
    """``y = relu(x W1) W2``, input ``x [1, 2]``, hidden value ``r`` (the ReLU output)."""
    return make_model([helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                       helper.make_node("MatMul", ["r", "W2"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                      {"W1": w1, "W2": w2}, opset)


W1, W2 = [[1.0, -1.0], [0.5, 2.0]], [[1.0], [1.0]]
W1_NEAR = [[1.0, -1.0], [0.5, 2.1]]  # the student: |y_b - y_a| <= 0.1 |x1| on the box

TWO_NETS = HEADER + """(declare-network N1
    (declare-input X float32 [1,2])
    (declare-hidden H float32 [1,2] "r")
    (declare-output Y float32 [1,1])
)
(declare-network N2
    (declare-input X2 float32 [1,2])
    (declare-output Y2 float32 [1,1])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] -1.0) (<= X[0,1] 1.0)))
(assert (and (== X[0,0] X2[0,0]) (== X[0,1] X2[0,1])))
(assert (or (>= (- Y2[0,0] Y[0,0]) {gap}) (>= (+ H[0,1] X[0,0]) 10.0)))
"""


def vnnlib2(*args: str):
    from click.testing import CliRunner

    from genbab.cli import main

    return CliRunner().invoke(main, ["vnnlib2", *args])


def assignment(text: str) -> dict[str, np.ndarray]:
    """``{name: flat values}`` from the lines after ``sat``: ``NAME TYPE [SHAPE]`` then one value per line."""
    lines = text.splitlines()
    assert lines[0] == "sat", text
    out, name = {}, None
    for line in lines[1:]:
        if " " in line:
            name = line.split()[0]
            out[name] = []
        else:
            out[name].append(float(line))
    return {k: np.asarray(v) for k, v in out.items()}


def test_composed_model_is_valid_onnx_and_matches_the_networks_on_onnxruntime(tmp_path: Path) -> None:
    """Two networks at different opsets, a hidden node, a shared input, a mixed comparison."""
    import onnxruntime as ort

    from genbab.model.compose import compose_query, evaluate_query
    from genbab.spec.vnnlib2 import load_query

    q = tmp_path / "q.vnnlib"
    q.write_text(TWO_NETS.format(gap="0.5"))
    query = load_query(q)
    lay = query.layout
    assert lay.slots == {"X": (0, 1), "X2": (0, 1)} and lay.n_slots == 2  # X2 == X: one shared input
    assert lay.offsets == {"Y": 0, "H": 1, "Y2": 3} and lay.copies_input and lay.n_outputs == 6
    a, b = mlp(W1, W2, opset=13), mlp(W1_NEAR, W2, opset=17)
    model = compose_query(query, {"N1": a, "N2": b})
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["X_all"] and [o.name for o in model.graph.output] == ["Y_all"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for _ in range(5):
        x = rng.uniform(-1, 1, 2).astype(np.float32)
        y = session.run(None, {"X_all": x.reshape(1, 2)})[0].reshape(-1)
        ref_a = session_out(a, x, ["y", "r"])
        ref_b = session_out(b, x, ["y"])
        expected = np.concatenate([ref_a[0].ravel(), ref_a[1].ravel(), ref_b[0].ravel(), x])
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        y_ref, values = evaluate_query(query, {"N1": a, "N2": b}, x)
        np.testing.assert_allclose(y_ref, expected, rtol=1e-6)
        assert values["H"].shape == (1, 2) and values["X2"].tolist() == values["X"].tolist()


def session_out(model, x, names):
    import onnxruntime as ort

    from genbab.model.compose import with_outputs

    s = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(names, {"x": x.reshape(1, 2)})


def test_two_networks_sharing_the_input_unsat_and_sat_with_exact_witness(tmp_path: Path) -> None:
    a, b = save(mlp(W1, W2), tmp_path / "a.onnx"), save(mlp(W1_NEAR, W2), tmp_path / "b.onnx")
    nets = ["--network", f"N1={a}", "--network", f"N2={b}", "--timeout", "15"]
    unsat, sat = tmp_path / "unsat.vnnlib", tmp_path / "sat.vnnlib"
    unsat.write_text(TWO_NETS.format(gap="0.5"))  # Y2 - Y <= 0.1 and H1 + X0 <= 2: nothing reaches it
    sat.write_text(TWO_NETS.format(gap="0.05"))  # X = [0, 1]: Y2 - Y = 0.1
    res = vnnlib2("verify", str(unsat), *nets)
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    res = vnnlib2("verify", str(sat), *nets)
    assert res.exit_code == 0, res.output
    v = assignment(res.output)
    assert list(v) == ["X", "H", "Y", "X2", "Y2"]
    assert np.array_equal(v["X"], v["X2"]) and 0 <= v["X"][0] <= 1 and -1 <= v["X"][1] <= 1
    assert v["Y2"][0] - v["Y"][0] >= 0.05
    res = vnnlib2("verify", str(sat), "--network", f"N1={a}", "--timeout", "15")  # N2's model missing
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "'N2'" in res.output


def test_equal_to_network_reuses_the_model_and_genbab_verify_composes(tmp_path: Path) -> None:
    """``(equal-to N1)``: one --network (the suite's convention) and ``genbab verify MODEL SPEC`` both work."""
    a = save(mlp(W1, W2), tmp_path / "a.onnx")
    q = tmp_path / "q.vnnlib"
    q.write_text(TWO_NETS.format(gap="0.05").replace("(declare-network N2", "(declare-network N2 (equal-to N1)"))
    res = vnnlib2("verify", str(q), "--network", f"N1={a}", "--timeout", "15")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output  # the same network: Y2 == Y
    independent = tmp_path / "indep.vnnlib"  # inputs not shared: Y2 - Y reaches 3 (network_equal01's shape)
    independent.write_text(TWO_NETS.format(gap="0.05").replace("(declare-network N2", "(declare-network N2 (equal-to N1)")
                           .replace("(assert (and (== X[0,0] X2[0,0]) (== X[0,1] X2[0,1])))",
                                    "(assert (and (>= X2[0,0] 0.0) (<= X2[0,0] 1.0) (>= X2[0,1] -1.0) (<= X2[0,1] 1.0)))"))
    # a fresh process each: the CLI's deadline counts from process start
    res = run_genbab("verify", str(a), str(independent), "--timeout", "15", "--quiet")
    assert res.returncode == 0 and res.stdout.startswith("sat"), res.stdout + res.stderr
    res = run_genbab("verify", str(a), str(q), "--timeout", "15", "--quiet")
    assert res.returncode == 0 and res.stdout.startswith("unsat"), res.stdout + res.stderr


def hidden_query(bound: str) -> str:
    return HEADER + f"""(declare-network N
    (declare-input X float32 [1,2])
    (declare-hidden H float32 [1,2] "r")
    (declare-output Y float32 [1,1])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0)))
(assert {bound})
"""


def test_hidden_node_constraints(tmp_path: Path) -> None:
    a = save(mlp(W1, W2), tmp_path / "a.onnx")
    q = tmp_path / "q.vnnlib"
    q.write_text(hidden_query("(< H[0,1] -0.001)"))  # a ReLU output is never negative
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    q.write_text(hidden_query("(and (>= H[0,1] 1.5) (<= H[0,0] 0.6))"))  # X = [0, 1]: H = [0.5, 2]
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 0, res.output
    v = assignment(res.output)
    x = v["X"]
    h = np.maximum(np.array([x[0] + 0.5 * x[1], -x[0] + 2 * x[1]]), 0)
    np.testing.assert_allclose(v["H"], h, rtol=1e-6, atol=1e-6)
    assert v["H"][1] >= 1.5 and v["H"][0] <= 0.6
    q.write_text(hidden_query("(>= H[0,1] 1.5)").replace('"r"', '"nowhere"'))
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 2 and "nowhere" in res.output and "Traceback" not in res.output


def two_in_two_out():
    """``s = x1 + x2``, ``d = x1 - x2`` over two inputs ``[1]`` each; outputs ``(s, relu(d))``."""
    f = TensorProto.FLOAT
    return make_model([helper.make_node("Add", ["x1", "x2"], ["s"]), helper.make_node("Sub", ["x1", "x2"], ["d0"]),
                       helper.make_node("Relu", ["d0"], ["d"])],
                      [helper.make_tensor_value_info("x1", f, [1]), helper.make_tensor_value_info("x2", f, [1])],
                      [helper.make_tensor_value_info("s", f, [1]), helper.make_tensor_value_info("d", f, [1])])


MULTI_IO = HEADER + """(declare-network N
    (declare-input X1 float32 [1])
    (declare-input X2 float32 [1])
    (declare-output S float32 [1])
    (declare-output D float32 [1])
)
(assert (and (>= X1[0] 0.0) (<= X1[0] 1.0) (>= X2[0] 10.0) (<= X2[0] 11.0)))
(assert {goal})
"""


def test_two_inputs_and_two_outputs(tmp_path: Path) -> None:
    m = save(two_in_two_out(), tmp_path / "m.onnx")
    q = tmp_path / "q.vnnlib"
    q.write_text(MULTI_IO.format(goal="(or (>= D[0] 0.5) (>= S[0] 12.5))"))  # D = 0 and S <= 12 on the box
    res = vnnlib2("verify", str(q), "--network", f"N={m}", "--timeout", "15")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    q.write_text(MULTI_IO.format(goal="(and (>= S[0] 11.5) (<= D[0] 0.0))"))
    res = vnnlib2("verify", str(q), "--network", f"N={m}", "--timeout", "15")
    assert res.exit_code == 0, res.output
    v = assignment(res.output)
    assert list(v) == ["X1", "X2", "S", "D"]
    assert 0 <= v["X1"][0] <= 1 and 10 <= v["X2"][0] <= 11 and v["S"][0] >= 11.5
    assert v["S"][0] == pytest.approx(v["X1"][0] + v["X2"][0], rel=1e-6)


LINEAR = HEADER + """(declare-network N
    (declare-input X float32 [1,2])
    (declare-output Y float32 [1,1])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 2.0) (>= X[0,1] 0.0) (<= X[0,1] 2.0)))
(assert (>= (+ (* 0.5 X[0,0]) (* 0.75 X[0,1])) {cut}))
(assert {goal})
"""


def test_linear_input_constraints_cut_the_box(tmp_path: Path) -> None:
    from genbab.spec.vnnlib2 import load_query

    a = save(mlp(W1, W2), tmp_path / "a.onnx")
    q = tmp_path / "q.vnnlib"
    q.write_text(LINEAR.format(cut="3.0", goal="(<= Y[0,0] 100.0)"))  # 0.5 x0 + 0.75 x1 <= 2.5: empty
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    # y = relu(x0 + x1/2) + relu(2 x1 - x0) <= 1.5 needs small x; the cut keeps x1 >= (2 - x0/2) / 0.75 ... none
    q.write_text(LINEAR.format(cut="2.0", goal="(<= Y[0,0] 1.5)"))
    query = load_query(q)
    assert query.layout.copies_input and query.spec.lower.tolist() == [[0.0, 0.0]]  # the box stays the box
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 0 and res.output == "unsat\n", res.output
    q.write_text(LINEAR.format(cut="2.0", goal="(<= Y[0,0] (+ X[0,0] 2.0))"))  # mixed: x = [2, 4/3] gives y ~ 3.3
    res = vnnlib2("verify", str(q), "--network", f"N={a}", "--timeout", "15")
    assert res.exit_code == 0, res.output
    v = assignment(res.output)
    x, y = v["X"], v["Y"][0]
    assert 0.5 * x[0] + 0.75 * x[1] >= 2.0 and y <= x[0] + 2.0
    assert y == pytest.approx(max(x[0] + 0.5 * x[1], 0) + max(2 * x[1] - x[0], 0), rel=1e-6)


def test_supports_claims_the_new_theories() -> None:
    assert set(vnnlib2("supports", "--multiple-network-theories").output.split()) == {"SNET", "MNET", "MENET", "MINET"}
    assert set(vnnlib2("supports", "--hidden-node-theories").output.split()) == {"NH", "H"}
    assert set(vnnlib2("supports", "--multiple-input-output-theories").output.split()) == {"SIO", "MIO"}
    assert set(vnnlib2("supports", "--multiple-node-comparison-theories").output.split()) == {"SNC", "MNC"}
    assert "LIN" in vnnlib2("supports", "--arithmetic-complexity-theories").output.split()


SHAPE_QUERY = HEADER + """(declare-network N
    (declare-input X float32 [2,3])
    (declare-output Y int64 [2])
)
(assert (and (>= X[0,0] 0.0) (<= X[0,0] 1.0) (>= X[0,1] 0.0) (<= X[0,1] 1.0) (>= X[0,2] 0.0) (<= X[0,2] 1.0)))
(assert (and (>= X[1,0] -2.0) (<= X[1,0] 2.0) (>= X[1,1] 0.0) (<= X[1,1] 1.0) (>= X[1,2] 0.0) (<= X[1,2] 1.0)))
(assert {goal})
"""


def test_constant_output_model_is_decided_on_its_value(tmp_path: Path) -> None:
    """``Y = Shape(X)`` = [2, 3] whatever X: decided on that constant (a fresh solver process each);
    ``sat`` carries an input of the box and the constant output, printed as integers."""
    graph = helper.make_graph([helper.make_node("Shape", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    m = save(model, tmp_path / "shape.onnx")
    q = tmp_path / "q.vnnlib"
    expected = {"(>= Y[1] 4)": "unsat", "(or (>= Y[0] 3) (<= Y[1] 2))": "unsat", "(<= Y[0] 1)": "unsat",
                "(>= Y[0] 2)": "sat", "(or (>= Y[0] 3) (and (<= Y[0] 2) (>= Y[1] 3)))": "sat"}
    for goal, verdict in expected.items():
        q.write_text(SHAPE_QUERY.format(goal=goal))
        res = run_genbab("vnnlib2", "verify", str(q), "--network", f"N={m}", "--timeout", "20")
        assert res.returncode == 0 and res.stdout.splitlines()[0] == verdict, (goal, res.stdout + res.stderr)
        if verdict == "sat":
            v = assignment(res.stdout)
            assert res.stdout.splitlines()[-2:] == ["2", "3"]  # int64 values as integers
            assert v["Y"].tolist() == [2, 3] and v["X"].shape == (6,)
            assert np.all(v["X"] >= [0, 0, 0, -2, 0, 0]) and np.all(v["X"] <= [1, 1, 1, 2, 1, 1])


ISOMORPHIC = HEADER + """(declare-network N1
    (declare-input X float32 [1])
    (declare-output Y float32 [1])
)
(declare-network N2
    (isomorphic-to N1) ; (declare-input X9 float64 [1]) in a comment is left alone
    (declare-input X2 float16 [1])
    (declare-output Y2 float16 [1])
)
(assert (and (>= X[0] 0.0) (<= X[0] 1.0) (>= X2[0] 2.0) (<= X2[0] 3.0)))
(assert (<= Y2[0] {bound}))
"""


def test_isomorphic_network_with_other_element_types(tmp_path: Path) -> None:
    """The parser refuses an ``isomorphic-to`` network whose types differ from its model's
    network; genbab reads it with the types copied over and reports the declared ones."""
    from genbab.spec.vnnlib2 import load_query, with_isomorphic_types

    f = TensorProto.FLOAT
    relu = save(make_model([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", f, [1])],
                           [helper.make_tensor_value_info("y", f, [1])]), tmp_path / "relu.onnx")
    q = tmp_path / "q.vnnlib"
    q.write_text(ISOMORPHIC.format(bound="0.5"))
    text, declared = with_isomorphic_types(q.read_text())
    assert declared == {"X2": "float16", "Y2": "float16"} and "X9 float64" in text and "float16" not in text
    query = load_query(q)
    assert [d.dtype for d in query.networks[1].variables()] == ["float16", "float16"]
    nets = ["--network", f"N1={relu}", "--network", f"N2={relu}", "--timeout", "20"]
    res = run_genbab("vnnlib2", "verify", str(q), *nets)
    assert res.returncode == 0 and res.stdout == "unsat\n", res.stdout + res.stderr  # Y2 = X2 >= 2
    q.write_text(ISOMORPHIC.format(bound="2.5"))
    res = run_genbab("vnnlib2", "verify", str(q), *nets)
    assert res.returncode == 0 and "X2 float16 [1]" in res.stdout.splitlines(), res.stdout + res.stderr
    assert assignment(res.stdout)["Y2"][0] <= 2.5
    q.write_text(ISOMORPHIC.format(bound="0.5").replace("(isomorphic-to N1)", ""))
    assert load_query(q).networks[1].inputs[0].dtype == "float16"  # independent networks keep their types


def test_unbounded_inputs_sat_by_attack_or_unknown(tmp_path: Path) -> None:
    """Elements the query does not bound take any value: ``sat`` from an attack on finite ranges
    (the witness checked on the exact query), else ``unknown`` with the reason on stderr."""
    f = TensorProto.FLOAT
    pool = make_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                      [helper.make_tensor_value_info("x", f, [1, 1, 3, 3])],
                      [helper.make_tensor_value_info("y", f, [1, 1, 2, 2])])
    m = save(pool, tmp_path / "pool.onnx")
    q = tmp_path / "q.vnnlib"
    query = HEADER + """(declare-network N (declare-input X float32 [1,1,3,3]) (declare-output Y float32 [1,1,2,2]))
(assert (and (>= X[0,0,2,2] 5.0) (<= X[0,0,2,2] 6.0)))
(assert {goal})
"""
    q.write_text(query.format(goal="(and (>= Y[0,0,1,1] 5.0) (<= Y[0,0,0,0] -20.0))"))  # Y[1,1] = X[2,2]
    res = run_genbab("vnnlib2", "verify", str(q), "--network", f"N={m}", "--timeout", "20")
    assert res.returncode == 0, res.stdout + res.stderr
    v = assignment(res.stdout)
    assert 5 <= v["X"][8] <= 6 and v["Y"][3] == v["X"][8] and v["Y"][0] == v["X"][[0, 1, 3, 4]].max() <= -20
    q.write_text(query.format(goal="(<= Y[0,0,1,1] 4.0)"))
    res = run_genbab("vnnlib2", "verify", str(q), "--network", f"N={m}", "--timeout", "20")
    assert res.returncode == 0 and res.stdout == "unknown\n", res.stdout + res.stderr
    assert "input X[0,0,0,0] is unbounded: only an attack was run" in res.stderr
