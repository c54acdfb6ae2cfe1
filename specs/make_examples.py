"""Rebuild the bundled example: a small sigmoid/tanh MLP and two properties.

``python specs/make_examples.py`` writes ``specs/toy_mlp.onnx`` (2 inputs -> 16 sigmoid -> 16 tanh
-> 3 outputs, fixed seed) and two VNN-LIB properties about the box ``[-1, 1]^2``:
``toy_mlp_unsafe.vnnlib`` asks whether output 0 can exceed output 1 anywhere in the box (it can:
``sat``), ``toy_mlp_robust.vnnlib`` whether output 2 can drop below ``floor`` (it cannot: ``unsat``,
``floor`` being a margin below the sampled minimum, shown by bound propagation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent


def build_model(seed: int = 7) -> onnx.ModelProto:
    """y = W3 tanh(W2 sigmoid(W1 x + b1) + b2) + b3, float32, input [1, 2], output [1, 3]."""
    rng = np.random.default_rng(seed)
    shapes = [(2, 16), (16, 16), (16, 3)]
    inits, nodes, prev = [], [], "x"
    acts = ["Sigmoid", "Tanh", None]
    for i, ((n_in, n_out), act) in enumerate(zip(shapes, acts)):
        w = (rng.standard_normal((n_in, n_out)) * (2.0 / np.sqrt(n_in))).astype(np.float32)
        b = (rng.standard_normal(n_out) * 0.5).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"], [f"h{i}"], name=f"dense{i}"))
        prev = f"h{i}"
        if act:
            nodes.append(helper.make_node(act, [prev], [f"a{i}"], name=f"{act.lower()}{i}"))
            prev = f"a{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "toy_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="genbab-specs")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def box_lines() -> list[str]:
    lines = [f"(declare-const X_{i} Real)" for i in range(2)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    for i in range(2):
        lines += [f"(assert (>= X_{i} -1.0))", f"(assert (<= X_{i} 1.0))"]
    return lines


def sampled_min_output2(model: onnx.ModelProto) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grid = np.stack(np.meshgrid(np.linspace(-1, 1, 201), np.linspace(-1, 1, 201)), -1).reshape(-1, 2)
    ys = np.concatenate([sess.run(None, {"x": p[None].astype(np.float32)})[0] for p in grid])
    return float(ys[:, 2].min())


def main() -> None:
    model = build_model()
    onnx.save(model, HERE / "toy_mlp.onnx")
    unsafe = ["; Can output 0 reach output 1 somewhere in the box? (sat)"] + box_lines() + ["(assert (>= Y_0 Y_1))"]
    (HERE / "toy_mlp_unsafe.vnnlib").write_text("\n".join(unsafe) + "\n")
    floor = np.floor(sampled_min_output2(model) - 1.0)
    robust = [f"; Can output 2 drop below {floor}? (unsat: its minimum over the box is above)"] + box_lines()
    robust += [f"(assert (<= Y_2 {floor}))"]
    (HERE / "toy_mlp_robust.vnnlib").write_text("\n".join(robust) + "\n")


if __name__ == "__main__":
    main()
