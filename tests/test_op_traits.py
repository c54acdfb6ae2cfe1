"""Op capabilities are data (issue 12 part 2): the registry's traits say which ops are split,
optimised, monotone, which table holds their split points and which kernel relaxes them, and the
bound and branching code reads those traits, never op names."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from test_products import product_model

import genbab
from genbab.bab import branch_points as bp
from genbab.bab.strategy import ActivationSplitting
from genbab.bounds import engine_for
from genbab.bounds.affine import FAST_RULES, INTERVALS, monotone_signs
from genbab.bounds.kernel_backend import relax_lines
from genbab.ops.bilinear import PRODUCT_OPS
from genbab.ops.registry import AFFINE_OPS, NodeRule, elementwise_table

ROOT = Path(__file__).resolve().parent.parent
F64 = torch.float64


def test_split_tables_named_by_traits_exist_and_every_shipped_table_is_named() -> None:
    """Each op's ``table`` trait names a shipped table of the right kind, and no shipped table is
    orphaned (the tanh-form GeLU names ``Gelu_tanh`` once bound)."""
    ops = list(elementwise_table().values()) + [elementwise_table()["Gelu"].bind(approximate="tanh")]
    named = {op.traits.table for op in ops if op.traits.table is not None}
    assert {"Sigmoid", "Tanh", "Sin", "Cos", "Gelu", "Gelu_tanh"} <= named
    for key in named:
        assert isinstance(bp.load_table(key), bp.Table1D), key
    products = {op.table for op in PRODUCT_OPS.values()}
    for key in products:
        assert isinstance(bp.load_table(key), bp.ProductTable), key
    assert set(bp.available_tables()) == named | products


def test_kernel_traits_name_what_the_relaxation_kernel_serves() -> None:
    from genbab.kernels.relax import SUPPORTED

    served = {op.traits.kernel for op in elementwise_table().values() if op.traits.kernel is not None}
    assert served == set(SUPPORTED)


def test_the_triton_backend_routes_relaxations_by_the_kernel_trait(monkeypatch) -> None:
    """The relaxation kernel is called under the op's ``kernel`` trait (not its name); an op whose
    trait is None gets exactly the PyTorch relaxation."""
    pytest.importorskip("triton")
    import genbab.kernels.relax as kernel

    calls = []
    monkeypatch.setattr(kernel, "relax", lambda name, l, u, params=None, **attrs: calls.append(name) or "kernel")
    sigmoid = elementwise_table()["Sigmoid"]
    lo = torch.linspace(-4, 1, 7, dtype=F64)
    hi = lo + torch.linspace(0.1, 3, 7, dtype=F64)
    renamed = dataclasses.replace(sigmoid, traits=dataclasses.replace(sigmoid.traits, kernel="Tanh"))
    assert relax_lines(renamed, lo, hi, backend="triton") == "kernel" and calls == ["Tanh"]
    plain = dataclasses.replace(sigmoid, traits=dataclasses.replace(sigmoid.traits, kernel=None))
    got, ref = relax_lines(plain, lo, hi, backend="triton"), sigmoid.relax(lo, hi)
    assert calls == ["Tanh"]
    for field in ("slope_lower", "bias_lower", "slope_upper", "bias_upper"):
        assert torch.equal(getattr(got, field), getattr(ref, field))


def test_non_splittable_ops_are_not_branching_candidates(tmp_path: Path) -> None:
    """``y = W3 (tanh(W1 x + b1) * sigmoid(W2 x))``: the inputs of tanh, sigmoid and the product's
    factors are candidates; marking Tanh and the product not splittable drops exactly those."""
    engine = engine_for(genbab.load_model(product_model(tmp_path, matmul=False)))
    strategy = ActivationSplitting()
    before = strategy.candidates(engine)
    kinds = {n.name: engine.rules[n.name] for n in engine.nodes}
    tanh = next(n for n in engine.nodes if kinds[n.name].kind == "elementwise" and kinds[n.name].op.name == "Tanh")
    mul = next(n for n in engine.nodes if kinds[n.name].kind == "bilinear")
    assert tanh.inputs[0] in before and set(mul.inputs) <= set(before)
    rule = engine.rules[tanh.name]
    engine.rules[tanh.name] = dataclasses.replace(
        rule, op=dataclasses.replace(rule.op, traits=dataclasses.replace(rule.op.traits, splittable=False)))
    engine.rules[mul.name] = dataclasses.replace(
        engine.rules[mul.name], product=dataclasses.replace(engine.rules[mul.name].product, splittable=False))
    after = strategy.candidates(engine)
    assert tanh.inputs[0] not in after and not set(mul.inputs) & set(after)
    sigmoid = next(n for n in engine.nodes if kinds[n.name].kind == "elementwise" and kinds[n.name].op.name == "Sigmoid")
    assert sigmoid.inputs[0] in after


def test_affine_traits_name_existing_rules_and_images() -> None:
    for op, traits in AFFINE_OPS.items():
        assert set(traits.backward) <= set(FAST_RULES), op
        assert traits.interval is None or traits.interval in INTERVALS, op
        assert traits.rounding in ("exact", "elementwise", "general"), op
        assert not traits.one_to_one or traits.rounding == "exact", op


def test_monotone_signs_follow_the_traits_by_argument_position() -> None:
    """``Sub(a, b)`` is increasing in ``a``, decreasing in ``b``; ``Sub(a, a)`` is neither;
    ``Resize`` is monotone in nearest mode only (its ``monotone_when`` trait)."""
    from genbab.model.graph import InputRef, Node

    def node(op, args, inputs, attrs=None):
        return Node(name="n", op_type=op, inputs=tuple(inputs), args=tuple(args), kwargs={}, module=None,
                    out_shape=(1,), attrs=attrs or {})

    assert monotone_signs(node("Sub", [InputRef(0), InputRef(1)], ["a", "b"])) == [1, -1]
    assert monotone_signs(node("Sub", [InputRef(1), InputRef(0)], ["a", "b"])) == [-1, 1]
    assert monotone_signs(node("Sub", [InputRef(0), InputRef(0)], ["a"])) is None
    assert monotone_signs(node("Neg", [InputRef(0)], ["a"])) == [-1]
    assert monotone_signs(node("Concat", [InputRef(0), InputRef(1), InputRef(2)], ["a", "b", "c"])) == [1, 1, 1]
    assert monotone_signs(node("Resize", [InputRef(0)], ["a"], {"mode": b"nearest"})) == [1]
    assert monotone_signs(node("Resize", [InputRef(0)], ["a"], {"mode": b"cubic"})) is None
    assert monotone_signs(node("Gemm", [InputRef(0)], ["a"])) is None


def test_rules_carry_their_op_entries(tmp_path: Path) -> None:
    engine = engine_for(genbab.load_model(product_model(tmp_path, matmul=True)))
    kinds = {rule.kind for rule in engine.rules.values()}
    assert kinds == {"affine", "elementwise", "bilinear"}
    for rule in engine.rules.values():
        assert isinstance(rule, NodeRule)
        assert (rule.affine is not None) == (rule.kind == "affine")
        assert (rule.op is not None) == (rule.kind == "elementwise")
        assert (rule.product is not None) == (rule.kind == "bilinear")
    assert any(rule.product is PRODUCT_OPS["MatMul"] for rule in engine.rules.values())


@pytest.mark.parametrize("folder", ["genbab/bounds", "genbab/bab"])
def test_bound_and_branching_code_compares_no_op_names(folder: str) -> None:
    """The architecture rule, checked: no ``op_type ==``/``in`` switch and no comparison of an op's
    name in the bound and branching code (they read traits)."""
    pattern = re.compile(r"op_type\s*(==|!=|\bin\b|\bnot in\b)|\bop(\.name|_name)\s*(==|!=|\bin\b)")
    offenders = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
