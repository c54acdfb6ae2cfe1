"""Tests of the VNN-LIB parser (:mod:`genbab.spec.vnnlib`).

Hand-written properties check exact tensors and error messages; every shared benchmark property
must parse into a consistent :class:`Spec`; and an independent evaluator of the original
s-expression (written here, sharing no code with the parser) cross-checks the DNF on random points.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BENCHMARKS, all_vnnlibs, needs_benchmarks, read_text

from genbab.errors import SpecError
from genbab.spec import vnnlib
from genbab.spec.spec import Spec
from genbab.spec.vnnlib import parse_vnnlib_file, parse_vnnlib_text


def decls(n_x: int, n_y: int) -> str:
    """Declarations of ``X_0..X_{n_x-1}`` and ``Y_0..Y_{n_y-1}``."""
    return "".join(f"(declare-const X_{i} Real)\n" for i in range(n_x)) + "".join(
        f"(declare-const Y_{j} Real)\n" for j in range(n_y))


def box(bounds: list[tuple[float, float]]) -> str:
    """Top-level asserts bounding ``X_i`` to ``[lo, hi]``."""
    return "".join(f"(assert (>= X_{i} {lo}))\n(assert (<= X_{i} {hi}))\n"
                   for i, (lo, hi) in enumerate(bounds))


def t(rows) -> torch.Tensor:
    """A float64 tensor."""
    return torch.tensor(rows, dtype=torch.float64)


def assert_spec(spec: Spec, lower, upper, C, d) -> None:
    """Exact equality of all four tensors (and float64 dtype)."""
    for got, want in ((spec.lower, lower), (spec.upper, upper), (spec.C, C), (spec.d, d)):
        assert got.dtype == torch.float64
        assert got.shape == t(want).shape, (got, want)
        assert torch.equal(got, t(want)), (got, want)


def parse_error(text: str) -> str:
    """The message of the SpecError raised by parsing ``text``."""
    with pytest.raises(SpecError) as info:
        parse_vnnlib_text(text, name="p.vnnlib")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("p.vnnlib")
    return msg


# ------------------------------------------------------------------------------------------
# Hand-written properties with exact tensors
# ------------------------------------------------------------------------------------------
def test_simple_box_and_output_constraint():
    text = decls(2, 2) + box([(0, 1), (-0.5, 0.25)]) + "(assert (<= Y_0 0.5))\n"
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[0, -0.5]], [[1, 0.25]], [[[1, 0]]], [[0.5]])
    assert (spec.n_cases, spec.n_inputs, spec.n_outputs, spec.n_rows) == (1, 2, 2, 1)


def test_output_comparisons():
    text = decls(1, 3) + box([(0, 1)]) + "(assert (<= Y_0 Y_1))\n(assert (>= Y_2 Y_0))\n"
    assert_spec(parse_vnnlib_text(text), [[0]], [[1]], [[[1, -1, 0], [1, 0, -1]]], [[0, 0]])


def test_nested_or_and():
    text = decls(1, 2) + box([(0, 1)]) + """
    (assert (or (and (<= Y_0 1) (or (>= Y_1 2) (<= Y_1 -2)))
                (<= Y_0 -5)))"""
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[0]] * 3, [[1]] * 3,
                [[[1, 0], [0, -1]], [[1, 0], [0, 1]], [[1, 0], [0, 0]]],
                [[1, -2], [1, -2], [-5, 1]])  # the short case is padded with 0 . y <= 1


def test_and_of_ors_multiplies_out_in_order():
    text = decls(1, 2) + box([(0, 1)]) + """
    (assert (and (or (<= Y_0 1) (<= Y_0 2)) (or (<= Y_1 3) (<= Y_1 4))))"""
    spec = parse_vnnlib_text(text)
    assert spec.C.shape == (4, 2, 2)
    assert torch.equal(spec.d, t([[1, 3], [1, 4], [2, 3], [2, 4]]))
    # Two separate top-level ``or`` asserts multiply the same way.
    text2 = decls(1, 2) + box([(0, 1)]) + """
    (assert (or (<= Y_0 1) (<= Y_0 2)))
    (assert (or (<= Y_1 3) (<= Y_1 4)))"""
    spec2 = parse_vnnlib_text(text2)
    assert torch.equal(spec2.C, spec.C) and torch.equal(spec2.d, spec.d)


def test_or_inside_and_inside_or():
    text = decls(1, 1) + box([(0, 1)]) + """
    (assert (or (and (or (<= Y_0 1) (<= Y_0 2)) (or (<= Y_0 3))) (and (and (<= Y_0 4)))))"""
    spec = parse_vnnlib_text(text)
    assert torch.equal(spec.C, t([[[1], [1]], [[1], [1]], [[1], [0]]]))
    # Within a case, the constraints shared by the disjuncts of an ``and`` come first.
    assert torch.equal(spec.d, t([[3, 1], [3, 2], [4, 1]]))  # padding row: 0 . y <= 1


def test_assert_after_or_applies_to_every_case():
    text = decls(2, 2) + """
    (assert (>= X_0 0))
    (assert (or (and (<= Y_0 1)) (and (>= Y_0 2))))
    (assert (<= X_0 1))
    (assert (<= Y_1 3))
    (assert (and (>= X_1 -1) (<= X_1 1)))"""
    spec = parse_vnnlib_text(text)
    # Constraints outside the disjunction come first in every case.
    assert_spec(spec, [[0, -1]] * 2, [[1, 1]] * 2,
                [[[0, 1], [1, 0]], [[0, 1], [-1, 0]]], [[3, 1], [3, -2]])


def test_input_disjunction_gives_one_box_per_case():
    text = decls(2, 1) + """
    (assert (or (and (>= X_0 0) (<= X_0 1) (>= X_1 0) (<= X_1 1) (>= Y_0 5))
                (and (>= X_0 2) (<= X_0 3) (>= X_1 -1) (<= X_1 0))))"""
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[0, 0], [2, -1]], [[1, 1], [3, 0]], [[[-1]], [[0]]], [[-5], [1]])  # padding: 0 . y <= 1


def test_equality_strict_and_linear_terms():
    text = decls(3, 3) + """
    (assert (= X_0 0.5))
    (assert (< (* 2 X_1) 1))
    (assert (> (- X_1) -3))
    (assert (>= (+ X_1 1) -1))
    (assert (<= (* -2 X_2) 4))
    (assert (<= (* X_2 4) 8))
    (assert (<= 0 X_2 1))
    (assert (<= (+ Y_0 (* 2 Y_1) (- Y_2 3)) (- 1)))
    (assert (= Y_0 (* 0.5 Y_1)))
    (assert (> 1 Y_2))"""
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[0.5, -2, 0]], [[0.5, 0.5, 1]],
                [[[1, 2, 1], [1, -0.5, 0], [-1, 0.5, 0], [0, 0, 1]]], [[2, 0, 0, 1]])


def test_flat_atoms_in_any_form():
    text = decls(2, 2) + """
    (assert (<= 0 X_0))
    (assert (>= 1 X_0))
    (assert ( <=\tX_1
       2 ))
    (assert (>= X_01 -2))
    (assert (<= -1 Y_1 1))
    (assert (= Y_0 Y_1))"""
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[0, -2]], [[1, 2]], [[[0, -1], [0, 1], [1, -1], [-1, 1]]], [[1, 1, 0, 0]])
    # A chain that is constantly false removes its case.
    text = decls(1, 1) + box([(0, 1)]) + "(assert (or (<= 2 1 Y_0) (<= Y_0 1 2)))"
    assert_spec(parse_vnnlib_text(text), [[0]], [[1]], [[[1]]], [[1]])


def test_number_syntaxes():
    text = decls(5, 1) + """
    (assert (>= X_0 1e-3)) (assert (<= X_0 1E2))
    (assert (>= X_1 -0.5)) (assert (<= X_1 +2))
    (assert (>= X_2 .5)) (assert (<= X_2 5.))
    (assert (>= X_3 -1.5e+1)) (assert (<= X_3 0))
    (assert (>= X_4 (- 2))) (assert (<= X_4 (- -2.5)))
    (assert (<= Y_0 -.25))"""
    spec = parse_vnnlib_text(text)
    assert_spec(spec, [[1e-3, -0.5, 0.5, -15, -2]], [[100, 2, 5, 0, 2.5]], [[[1]]], [[-0.25]])


def test_comments_everywhere():
    text = """; header (with parens) ) (
(declare-const X_0 Real) ; trailing comment
(declare-const Y_0 Real);no space
; (assert (<= X_0 100))
(assert ; inside
  (and (>= X_0 0) ; between atoms )
       (<= X_0 1)))
(assert (<= Y_0 ; mid-atom
  2))
; final comment without newline (assert"""
    assert_spec(parse_vnnlib_text(text), [[0]], [[1]], [[[1]]], [[2]])


def test_gzip_and_plain_files(tmp_path: Path):
    text = decls(1, 1) + box([(0, 1)]) + "(assert (<= Y_0 2))\n"
    files = {"plain.vnnlib": text.encode(), "zipped.vnnlib.gz": gzip.compress(text.encode()),
             "zipped_no_suffix.vnnlib": gzip.compress(text.encode()),
             "plain_with_gz_suffix.vnnlib.gz": text.encode()}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        spec = parse_vnnlib_file(tmp_path / name, n_inputs=1, n_outputs=1)
        assert_spec(spec, [[0]], [[1]], [[[1]]], [[2]])
    spec = parse_vnnlib_file(str(tmp_path / "plain.vnnlib"))  # str paths too
    assert spec.n_cases == 1


def test_duplicate_rows_are_dropped():
    text = decls(1, 2) + box([(0, 1)]) + """
    (assert (<= Y_0 1)) (assert (<= Y_0 1)) (assert (<= (+ Y_0) 1))
    (assert (or (and (<= Y_0 1) (>= Y_1 0)) (and (>= Y_1 0) (>= Y_1 0))))"""
    spec = parse_vnnlib_text(text)
    assert torch.equal(spec.C, t([[[1, 0], [0, -1]], [[1, 0], [0, -1]]]))
    assert torch.equal(spec.d, t([[1, 0], [1, 0]]))


def test_no_output_constraint_gives_zero_row():
    spec = parse_vnnlib_text(decls(1, 2) + box([(0, 1)]))
    assert_spec(spec, [[0]], [[1]], [[[0, 0]]], [[1]])  # no constraint: the padding row 0 . y <= 1


def test_empty_box_and_false_cases_are_dropped():
    text = decls(1, 1) + """
    (assert (or (and (>= X_0 2) (<= X_0 1) (<= Y_0 7))
                (and (>= X_0 0) (<= X_0 1) (<= Y_0 8))
                (and (>= X_0 0) (<= X_0 1) (<= 1 0) (<= Y_0 9))
                (and (>= X_0 0) (<= X_0 1) (<= 0 1) (<= Y_0 10) false)))"""
    assert_spec(parse_vnnlib_text(text), [[0]], [[1]], [[[1]]], [[8]])


def test_constant_constraints_and_empty_result():
    text = decls(1, 1) + box([(0, 1)]) + "(assert (<= (- 3 1) (* 2 1)))(assert true)"
    assert parse_vnnlib_text(text).n_cases == 1
    spec = parse_vnnlib_text(decls(1, 1) + box([(0, 1)]) + "(assert (< 2 1))")
    assert spec.n_cases == 0 and spec.lower.shape == (0, 1) and spec.C.shape == (0, 1, 1)
    spec = parse_vnnlib_text(decls(1, 1) + box([(1, 0)]))
    assert spec.n_cases == 0


def test_unbounded_variable_in_an_empty_case_is_fine():
    text = decls(2, 1) + """
    (assert (>= X_0 0)) (assert (<= X_0 1))
    (assert (or (and (>= X_1 0) (<= X_1 1)) (and (>= X_0 5) (<= X_1 1))))"""
    assert_spec(parse_vnnlib_text(text), [[0, 0]], [[1, 1]], [[[0]]], [[1]])


def test_deep_nesting_does_not_recurse():
    depth = 20000
    text = decls(1, 1) + box([(0, 1)]) + "(assert " + "(and " * depth + "(<= Y_0 1)" + \
        ")" * depth + ")"
    assert_spec(parse_vnnlib_text(text), [[0]], [[1]], [[[1]]], [[1]])


def test_large_single_disjunction():
    n = 3000
    cases = "".join(f"(and (>= X_0 {i}) (<= X_0 {i + 0.5}) (>= Y_0 {i}))\n" for i in range(n))
    spec = parse_vnnlib_text(decls(1, 1) + f"(assert (or {cases}))")
    assert spec.n_cases == n
    assert torch.equal(spec.lower[:, 0], torch.arange(n, dtype=torch.float64))
    assert torch.equal(spec.d[:, 0], -torch.arange(n, dtype=torch.float64))


def test_size_arguments():
    text = decls(2, 3) + box([(0, 1), (0, 1)])
    assert parse_vnnlib_text(text, n_inputs=2, n_outputs=3).n_outputs == 3
    with pytest.raises(SpecError, match="2 inputs but 3 were expected"):
        parse_vnnlib_text(text, n_inputs=3)
    with pytest.raises(SpecError, match="3 outputs but 4 were expected"):
        parse_vnnlib_text(text, n_outputs=4)


def test_ignored_smtlib_commands():
    text = "(set-logic QF_LRA)\n" + decls(1, 1) + box([(0, 1)]) + "(check-sat)\n(get-model)\n(exit)"
    assert parse_vnnlib_text(text).n_cases == 1


def test_case_limit(monkeypatch):
    monkeypatch.setattr(vnnlib, "MAX_CASES", 1000)
    ors = "".join("(assert (or " + " ".join(f"(<= Y_0 {k})" for k in range(10)) + "))\n"
                  for _ in range(4))
    with pytest.raises(SpecError, match="more than 1000 cases"):
        parse_vnnlib_text(decls(1, 1) + box([(0, 1)]) + ors)


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------
HEAD = decls(2, 2)  # 4 lines
LINE5 = len(HEAD.splitlines()) + 1


@pytest.mark.parametrize("body, line, fragment", [
    ("(assert (<= X_0 1)\n(assert (>= X_0 0))", LINE5 + 1, "only allowed at top level"),
    ("(assert (and (<= X_0 1)\n(>= X_0 0))", LINE5, "never closed"),
    ("(assert (<= X_0 1)))", LINE5, "unexpected ')'"),
    ("\n(assert (<= X_7 1))", LINE5 + 1, "undeclared variable X_7"),
    ("\n(assert (<= (+ Y_9 1) 1))", LINE5 + 1, "undeclared variable Y_9"),
    ("\n\n(assert (<= Y_0 Y_9))", LINE5 + 2, "undeclared variable Y_9"),
    ("(assert (<= X_0 1))\n(assert (>= X_05 0))", LINE5 + 1, "undeclared variable X_5"),
    ("(assert (<= X_0 1))(assert (>= X_0 nan))", LINE5, "got 'nan'"),
    ("(assert (<= X_0 1))(assert (>= X_0 1_0))", LINE5, "got '1_0'"),
    ("(declare-const X_123456789012 Real)", LINE5, "index too large"),
    ("(assert (or (<= X_0 1)\n (<= Y_0 X_1)))", LINE5 + 1, "mixes inputs X and outputs Y"),
    ("(assert (<= (+ X_0 Y_0) 1))", LINE5, "mixes inputs X and outputs Y"),
    ("\n\n(assert (<= (+ X_0 X_1) 1))", LINE5 + 2, "several inputs (X_0, X_1)"),
    ("(assert (<= X_0 X_1))", LINE5, "several inputs"),
    ("\n(assert (<= X_0 abc))", LINE5 + 1, "expected a number or a variable, got 'abc'"),
    ("(assert (<= (+ X_0 1.2.3) 1))", LINE5, "expected a number or a variable"),
    ("(assert (<= X_0 1e999))", LINE5, "number out of range"),
    ("(assert (not (<= X_0 1)))", LINE5, "unsupported construct 'not'"),
    ("(assert (=> (<= X_0 1) (<= Y_0 1)))", LINE5, "unsupported construct '=>'"),
    ("(assert (<= (* X_0 X_1) 1))", LINE5, "nonlinear"),
    ("(assert (<= (/ X_0 2) 1))", LINE5, "unsupported construct '/'"),
    ("(assert (and (+ X_0 1)))", LINE5, "expects formulas"),
    ("(assert (<= (and (<= X_0 1)) 1))", LINE5, "expects terms"),
    ("(assert (<= X_0 1) (<= X_0 2))", LINE5, "assert takes one formula, got 2"),
    ("(assert)", LINE5, "assert takes one formula, got 0"),
    ("(assert (<= X_0))", LINE5, "needs two terms"),
    ("(assert ())", LINE5, "empty parentheses"),
    ("(assert ((<= X_0 1)))", LINE5, "expected an operator"),
    ("(foo X_0)", LINE5, "unsupported top-level command 'foo'"),
    ("(<= X_0 1)", LINE5, "only allowed inside an assert"),
    ("X_0", LINE5, "outside parentheses"),
    ("(declare-const X_0 Real)", LINE5, "declared twice"),
    ("(declare-const Z Real)", LINE5, "unsupported variable name 'Z'"),
    ("(declare-const X_5 Int)", LINE5, "unsupported sort 'Int'"),
    ("(declare-const X_5)", LINE5, "expected (declare-const NAME Real)"),
    ("(assert (<= X_0 \x00\x01))", LINE5, "expected a number or a variable"),
])
def test_errors_name_the_line(body: str, line: int, fragment: str):
    msg = parse_error(HEAD + body)
    assert msg.startswith(f"p.vnnlib:{line}: "), msg
    assert fragment in msg, msg


def test_error_location_in_repeated_run_atoms():
    # The same bad atom string appears twice; the first occurrence (line 6) is reported.
    body = "(assert (or (and (<= X_0 1) (>= X_0 0))\n(and (<= X_0 1)  (<= Y_0 X_1))\n" \
           "(and (<= X_0 1)  (<= Y_0 X_1))))"
    msg = parse_error(HEAD + body)
    assert msg.startswith(f"p.vnnlib:{LINE5 + 1}: ") and "mixes" in msg, msg


@pytest.mark.parametrize("text, fragment", [
    ("", "no assert found"),
    ("   \n ; only a comment\n", "no assert found"),
    (decls(1, 1), "no assert found"),
    ("(assert true)", "no input variable"),
])
def test_errors_for_empty_files(text: str, fragment: str):
    assert fragment in parse_error(text)


def test_unbounded_input_gets_infinite_bounds():
    """An input without a lower or upper bound may take any value there (genbab then only attacks)."""
    inf = float("inf")
    text = decls(2, 1) + "(assert (>= X_0 0)) (assert (<= X_0 1)) (assert (>= X_1 0))"
    assert_spec(parse_vnnlib_text(text), [[0, 0]], [[1, inf]], [[[0]]], [[1]])
    text = decls(2, 1) + box([(0, 1)]) + "(assert (or (<= X_1 1) (>= X_1 0)))"
    assert_spec(parse_vnnlib_text(text), [[0, -inf], [0, 0]], [[1, 1], [1, inf]], [[[0]], [[0]]], [[1], [1]])
    spec = parse_vnnlib_text(decls(3, 1) + box([(0, 1)]))
    assert spec.unbounded().tolist() == [[False, True, True]]
    finite = spec.finite(2.0)  # within 2 of 0, or of the one finite bound; inside the box
    assert finite.lower.tolist() == [[0, -2, -2]] and finite.upper.tolist() == [[1, 2, 2]]
    text = decls(2, 1) + "(assert (>= X_0 5)) (assert (<= X_1 -3))"
    assert_spec(parse_vnnlib_text(text).finite(2.0), [[5, -5]], [[7, -3]], [[[0]]], [[1]])


def test_unbounded_input_in_a_vnnlib2_query(tmp_path: Path):
    from genbab.spec.vnnlib2 import load_query

    q = tmp_path / "q.vnnlib"
    q.write_text("""(vnnlib-version <2.0>)
(declare-network N (declare-input X float32 [1,2,2]) (declare-output Y float32 [1]))
(assert (and (>= X[0,1,1] 5.0) (<= X[0,1,1] 6.0) (>= X[0,0,1] 0.0)))
(assert (>= Y[0] 5.0))""")
    query = load_query(q)
    inf = float("inf")
    assert query.spec.lower.tolist() == [[-inf, 0, -inf, 5]] and query.spec.upper.tolist() == [[inf, inf, inf, 6]]
    assert query.unbounded_input() == "X[0,0,0]"


def test_file_errors(tmp_path: Path):
    good = (decls(1, 1) + box([(0, 1)])).encode()
    cases = {
        "empty.vnnlib": b"",
        "truncated.vnnlib": good + b"(assert (or (<= Y_0 1)\n (<= Y_0",
        "garbage.vnnlib": bytes(random.Random(0).randrange(256) for _ in range(4000)),
        "corrupt.vnnlib.gz": gzip.compress(good)[:-12] + b"\x00" * 3,
        "badbody.vnnlib.gz": b"\x1f\x8b\x08\x00" + b"notgzip" * 20,
        "latin1.vnnlib": good + "; caf\xe9\n".encode("latin-1"),
        "zipped_garbage.vnnlib.gz": gzip.compress(b"\x00\xff\xfe garbage (((("),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SpecError) as info:
            parse_vnnlib_file(tmp_path / name)
        msg = str(info.value)
        assert msg.startswith(name) and "\n" not in msg, msg
    with pytest.raises(SpecError, match="truncated.vnnlib:6: "):
        parse_vnnlib_file(tmp_path / "truncated.vnnlib")
    with pytest.raises(SpecError, match="latin1.vnnlib:5: not a text file"):
        parse_vnnlib_file(tmp_path / "latin1.vnnlib")
    with pytest.raises(SpecError, match="cannot read"):
        parse_vnnlib_file(tmp_path / "missing.vnnlib")


# ------------------------------------------------------------------------------------------
# Independent evaluator of the original s-expression, vectorised over sample points
# ------------------------------------------------------------------------------------------
def sexprs(text: str) -> list:
    """Nested lists of the s-expressions in ``text`` (comments removed)."""
    text = re.sub(r";[^\n]*", " ", text)
    out: list = []
    stack = [out]
    for tok in text.replace("(", " ( ").replace(")", " ) ").split():
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    return out


def evaluate(e, x: np.ndarray, y: np.ndarray):
    """Value of term/formula ``e`` at each sample row of ``x``/``y`` (strict read as non-strict)."""
    if isinstance(e, str):
        if e in ("true", "false"):
            return np.full(len(x), e == "true")
        if e[0] in "XY" and e[1] == "_":
            return (x if e[0] == "X" else y)[:, int(e[2:])]
        return np.full(len(x), float(e))
    op, args = e[0], [evaluate(a, x, y) for a in e[1:]]
    if op == "and":
        return np.logical_and.reduce(args) if args else np.full(len(x), True)
    if op == "or":
        return np.logical_or.reduce(args) if args else np.full(len(x), False)
    if op == "+":
        return sum(args)
    if op == "-":
        return -args[0] if len(args) == 1 else args[0] - sum(args[1:])
    if op == "*":
        return np.prod(args, axis=0)
    cmp = {"<=": np.less_equal, "<": np.less_equal, ">=": np.greater_equal,
           ">": np.greater_equal, "=": np.equal}[op]
    return np.logical_and.reduce([cmp(a, b) for a, b in zip(args, args[1:])])


def truth(text: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each sample satisfies every assert of ``text``."""
    ok = np.full(len(x), True)
    for cmd in sexprs(text):
        if cmd[0] == "assert":
            ok &= evaluate(cmd[1], x, y)
    return ok


def membership(spec: Spec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether each sample lies in some case of ``spec``."""
    xt = torch.from_numpy(x)
    in_box = ((xt[:, None] >= spec.lower) & (xt[:, None] <= spec.upper)).all(-1)
    sat = spec.violation(torch.from_numpy(y)) <= 0
    return (in_box & sat).any(-1).numpy()


def sample_points(spec: Spec, rng: np.random.Generator, n: int, y_scale: float):
    """Points mostly inside case boxes (some on their corners, some slightly outside)."""
    case = rng.integers(0, spec.n_cases, n)
    lo, hi = spec.lower[case].numpy(), spec.upper[case].numpy()
    u = rng.random(lo.shape)
    u[rng.random(lo.shape) < 0.05] = 0.0
    u[rng.random(lo.shape) < 0.05] = 1.0
    x = np.clip(lo + u * (hi - lo), lo, hi)
    outside = rng.random(n) < 0.2
    jitter = rng.normal(size=x.shape) * (hi - lo + 1e-3) * (rng.random(x.shape) < 0.02)
    x[outside] += jitter[outside]
    y = rng.normal(size=(n, spec.n_outputs)) * y_scale
    return x, y


def cross_check(text: str, spec: Spec, seed: int, n: int = 400, y_scale: float = 1.0) -> None:
    """The Spec and the direct evaluation of ``text`` agree on random points (both outcomes)."""
    rng = np.random.default_rng(seed)
    x, y = sample_points(spec, rng, n, y_scale)
    want, got = truth(text, x, y), membership(spec, x, y)
    assert (want == got).all(), np.flatnonzero(want != got)[:10]
    return want


def random_formula(rng: random.Random, depth: int) -> str:
    """A random and/or formula over input bounds and output constraints."""
    if depth == 0 or rng.random() < 0.3:
        kind = rng.random()
        if kind < 0.3:
            i, lo = rng.randrange(3), rng.choice([-1.0, -0.5, 0.0, 0.25])
            return rng.choice([f"(>= X_{i} {lo})", f"(<= X_{i} {lo + 1})",
                               f"(< (* -2 X_{i}) {2 - 2 * lo})", f"(= X_{i} {lo + 0.5})"])
        if kind < 0.9:
            a, b, c = rng.randrange(3), rng.randrange(3), rng.choice([-0.5, 0, 0.5])
            return rng.choice([f"(<= Y_{a} {c})", f"(>= Y_{a} Y_{b})", f"(< Y_{a} (- {c}))",
                               f"(<= (+ Y_{a} (* 2 Y_{b})) {c})", f"(> (- Y_{a} Y_{b} {c}) 0)"])
        return rng.choice(["true", "false", "(<= 1 2)", "(>= 1 2)"])
    op = rng.choice(["and", "or"])
    return f"({op} " + " ".join(random_formula(rng, depth - 1)
                                for _ in range(rng.randint(1, 3))) + ")"


@pytest.mark.parametrize("seed", range(60))
def test_random_formulas_match_direct_evaluation(seed: int):
    rng = random.Random(seed)
    asserts = [f"(assert {random_formula(rng, 3)})" for _ in range(rng.randint(1, 3))]
    asserts.insert(rng.randrange(len(asserts) + 1), box([(-1, 1)] * 3).replace("\n", " "))
    text = decls(3, 3) + "\n".join(asserts)
    spec = parse_vnnlib_text(text)
    if spec.n_cases == 0:  # no point can satisfy the property: check a sample of the box
        x = np.random.default_rng(seed).uniform(-1, 1, (300, 3))
        y = np.random.default_rng(seed).normal(size=(300, 3))
        assert not truth(text, x, y).any()
        return
    cross_check(text, spec, seed)


# ------------------------------------------------------------------------------------------
# The shared benchmark properties
# ------------------------------------------------------------------------------------------
def _id(p: Path) -> str:
    """Short test id: benchmark folder and file name."""
    return f"{p.parent.name}/{p.name}" if p.parent.name != "vnnlib" else \
        f"{p.parent.parent.name}/{p.name}"


@needs_benchmarks
@pytest.mark.slow
@pytest.mark.parametrize("path", all_vnnlibs(), ids=_id)
def test_benchmark_property_parses(path: Path):
    if path.name == "test_mul_var_var.vnnlib":  # Marabou unit test with (* X_0 X_0)
        with pytest.raises(SpecError, match=r"test_mul_var_var.vnnlib:\d+: .*nonlinear"):
            parse_vnnlib_file(path)
        return
    spec = parse_vnnlib_file(path)
    assert spec.n_cases >= 1 and spec.n_inputs >= 1 and spec.n_rows >= 1
    for x in (spec.lower, spec.upper, spec.C, spec.d):
        assert x.dtype == torch.float64 and torch.isfinite(x).all()
    assert spec.lower.shape == spec.upper.shape == (spec.n_cases, spec.n_inputs)
    assert spec.C.shape == (spec.n_cases, spec.n_rows, spec.n_outputs)
    assert spec.d.shape == (spec.n_cases, spec.n_rows)
    assert (spec.lower <= spec.upper).all()
    text = read_text(path)
    assert spec.n_inputs == len(re.findall(r"declare-const X_", text))
    assert spec.n_outputs == len(re.findall(r"declare-const Y_", text))


CROSS_CHECKED = [
    "lsnc/vnnlib/quadrotor2d_state_0.vnnlib.gz",
    "lsnc/vnnlib/quadrotor2d_output_0.vnnlib.gz",
    "units/test_add_var.vnnlib",
    "eran_sigmoid/vnnlib/mnist_spec_idx_1150_eps_0.01200.vnnlib.gz",
    "ml4acopf/vnnlib/14_ieee_prop1.vnnlib.gz",
    "ml4acopf/vnnlib/118_ieee_prop2.vnnlib.gz",
    "ml4acopf/vnnlib/300_ieee_prop4.vnnlib.gz",
    "vit/vnnlib/pgd_2_3_16_7700.vnnlib.gz",
    "nn4sys_nonlinear/vnnlib/cardinality_0_1_128.vnnlib.gz",
    "nn4sys_nonlinear/vnnlib/pensieve_parallel_63.vnnlib.gz",
    "dist_shift/vnnlib/index1028_delta0.13.vnnlib.gz",
]


@needs_benchmarks
@pytest.mark.parametrize("rel", CROSS_CHECKED)
def test_benchmark_property_matches_direct_evaluation(rel: str):
    path = BENCHMARKS / rel
    if not path.exists():
        pytest.skip(f"{rel} is absent")
    spec = parse_vnnlib_file(path)
    y_scale = 0.05 if "ml4acopf" in rel else 1.0
    want = cross_check(read_text(path), spec, seed=len(rel), y_scale=y_scale)
    assert want.any() and not want.all()
