"""A case with fewer output rows than the longest case (or none) can still be witnessed.

Padding rows are ``0 . y <= 1`` (margin -1); with ``0 . y <= 0`` a short case's margin could
never be strictly negative, and a true counterexample would be missed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import genbab

SPECS = Path(__file__).resolve().parent.parent / "specs"
BOX = ("(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
       "(declare-const Y_2 Real)\n(assert (>= X_0 -1.0))\n(assert (<= X_0 1.0))\n(assert (>= X_1 -1.0))\n"
       "(assert (<= X_1 1.0))\n")


@pytest.mark.parametrize("output_part", [
    "(assert (or (and (<= Y_0 100.0)) (and (<= Y_1 -100.0) (<= Y_2 -100.0))))",  # short first case
    "(assert (and))",  # no output constraint: every input of the box violates
])
def test_short_case_is_witnessed(tmp_path: Path, output_part: str) -> None:
    spec_path = tmp_path / "p.vnnlib"
    spec_path.write_text(BOX + output_part + "\n")
    spec = genbab.load_spec(str(spec_path))
    assert float(spec.violation(torch.zeros(1, 3)).min()) < 0  # the origin output violates some case
    result = genbab.verify(str(SPECS / "toy_mlp.onnx"), str(spec_path), timeout=10)
    assert result.status == "sat"
    assert result.witness.margin < 0
    x = np.asarray(result.witness.x, dtype=np.float64)
    assert np.all(x >= -1.0) and np.all(x <= 1.0)


def test_an_input_numbering_gap_is_named(tmp_path: Path) -> None:
    """``X_99999`` declared for a 2-input model: the error names the gap, not a missing bound."""
    from genbab.errors import SpecError

    spec_path = tmp_path / "gap.vnnlib"
    spec_path.write_text(BOX.replace("(declare-const X_1 Real)\n", "(declare-const X_1 Real)\n(declare-const X_99999 Real)\n")
                         + "(assert (<= Y_0 0.0))\n")
    with pytest.raises(SpecError, match="X_99999 is declared but X_2 is not"):
        genbab.load_spec(str(spec_path))
