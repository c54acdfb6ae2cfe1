"""Pre-optimized branching points: shipped tables, run-time lookup, offline build."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from genbab.bab import branch_points as bp
from genbab.lookup_tables import build as builder
from genbab.ops.registry import elementwise_table

F64 = torch.float64
ONE_D = ["Sigmoid", "Tanh", "Erf", "Sin", "Cos", "Gelu", "Gelu_tanh", "Exp"]


def random_intervals(n: int, lo: float = -5.0, hi: float = 5.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=F64)
    b = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=F64)
    return torch.minimum(a, b), torch.maximum(a, b)


def children_area(op, lo, hi, p):
    return builder.relax_area(op, lo, p) + builder.relax_area(op, p, hi)


def test_tables_load_with_expected_grids():
    """Every table loads with its grid; load time is measured by benchmarks/table_load_bench.py."""
    bp.clear_cache()
    tables = bp.load_all()
    assert set(ONE_D + ["Log", "Sqrt", "Reciprocal", "Mul"]) <= set(tables)
    for key in ONE_D:
        t = tables[key]
        assert isinstance(t, bp.Table1D)
        assert (t.lo, t.step, t.n) == (-5.0, 0.01, 1001)
        assert t.codes.shape == (1001, 1001)
        i, j = torch.triu_indices(1001, 1001, 2)
        assert (t.codes[i, j] != bp.INVALID).float().mean() > 0.99
    prod = tables["Mul"]
    assert isinstance(prod, bp.ProductTable) and prod.split_y.shape == (prod.n, prod.n)
    assert ((prod.t_code >= 1) & (prod.t_code < prod.t_den)).all()
    assert bp.table_meta("Gelu_tanh")["attrs"] == {"approximate": "tanh"}


@pytest.mark.parametrize("key", ONE_D)
def test_opt_no_worse_than_midpoint(key):
    op = builder.SPECS[key].op()
    lo, hi = random_intervals(1500, seed=1)
    parent = builder.relax_area(op, lo, hi)
    opt = children_area(op, lo, hi, bp.split_point(op, lo, hi, "opt"))
    mid = children_area(op, lo, hi, 0.5 * (lo + hi))
    assert opt.sum() <= mid.sum() * (1 + 1e-9)
    worse = opt > mid + 1e-3 * parent + 1e-12
    assert worse.float().mean() < 0.01
    assert ((opt - mid) / parent).max() < 0.1
    if key in ("Sigmoid", "Tanh"):
        assert (opt / mid).mean() < 0.95


def test_table_key_and_op_objects():
    table = elementwise_table()
    gelu_tanh = table["Gelu"].bind(approximate="tanh")
    assert bp.table_key(gelu_tanh) == "Gelu_tanh"
    assert bp.table_key(table["Gelu"]) == "Gelu"
    lo, hi = random_intervals(50, seed=2)
    assert torch.equal(bp.split_point(gelu_tanh, lo, hi), bp.split_point("Gelu_tanh", lo, hi))


EDGE_LO = [-7.0, 3.0, -5.0, 0.01, 0.0, -5.0, 1.0, -math.inf, 2.0, -math.inf, -1e30, 4.999, -3.0]
EDGE_HI = [1.0, 9.0, 5.0, 0.02, 1e-7, -4.99, 1.0 + 1e-12, math.inf, math.inf, -3.0, 1e30, 5.001, -2.995]


@pytest.mark.parametrize("name", ["Sigmoid", "Tanh", "Sin", "Gelu_tanh", "Exp", "Log", "Sqrt", "Reciprocal",
                                  "Relu", "LeakyRelu", "Sign", "Pow", "NoSuchOp"])
@pytest.mark.parametrize("mode", ["opt", "uniform"])
def test_points_strictly_inside(name, mode):
    lo, hi = torch.tensor(EDGE_LO, dtype=F64), torch.tensor(EDGE_HI, dtype=F64)
    rl, rh = random_intervals(200, -6.0, 6.0, seed=3)
    lo, hi = torch.cat([lo, rl]), torch.cat([hi, rh])
    p = bp.split_point(name, lo, hi, mode)
    assert p.dtype == F64 and p.shape == lo.shape
    assert torch.isfinite(p).all()
    assert ((lo < p) & (p < hi)).all()
    # float32 bounds one ulp apart still get a float64 point strictly between them
    a = torch.tensor([0.3, -2.0, 1e-3], dtype=torch.float32)
    b = torch.nextafter(a, torch.full_like(a, math.inf))
    q = bp.split_point(name, a, b, mode)
    assert ((a.double() < q) & (q < b.double())).all()
    # any shape, and degenerate / empty inputs do not fail or give NaN for finite bounds
    grid = bp.split_point(name, lo.reshape(-1, 1)[:12], hi.reshape(1, -1)[:, :1].expand(12, 3), mode)
    assert grid.shape == (12, 3)
    same = bp.split_point(name, torch.tensor([0.5]), torch.tensor([0.5]), mode)
    assert same.item() == 0.5
    assert bp.split_point(name, torch.empty(0), torch.empty(0), mode).numel() == 0


def test_uniform_is_midpoint_and_kinks():
    lo, hi = random_intervals(100, seed=4)
    for key in ONE_D:
        assert torch.allclose(bp.split_point(key, lo, hi, "uniform"), 0.5 * (lo + hi), rtol=0, atol=1e-15)
    for name in ("Relu", "LeakyRelu", "Sign"):
        for mode in ("opt", "uniform"):
            p = bp.split_point(name, lo, hi, mode)
            straddle = (lo < 0) & (hi > 0)
            assert (p[straddle] == 0).all()
            assert torch.allclose(p[~straddle], 0.5 * (lo + hi)[~straddle])
    assert bp.split_point("Sigmoid", torch.tensor([-9.0]), torch.tensor([1.0]), "opt").item() == -4.0


def test_default_mode(monkeypatch):
    lo, hi = torch.tensor([-1.0]), torch.tensor([3.0])
    monkeypatch.setenv("GENBAB_BRANCHING_POINTS", "uniform")
    assert bp.split_point("Tanh", lo, hi).item() == 1.0
    monkeypatch.setenv("GENBAB_BRANCHING_POINTS", "opt")
    assert bp.split_point("Tanh", lo, hi).item() != 1.0
    bp.set_default_mode("uniform")
    try:
        assert bp.split_point("Tanh", lo, hi).item() == 1.0
    finally:
        bp.set_default_mode(None)
    with pytest.raises(ValueError):
        bp.split_point("Tanh", lo, hi, "best")


def test_small_build_matches_shipped_table():
    """A coarse build (step 0.1, its grid points are shipped grid points) reaches the same
    total area as the shipped table at every shared pair, and mostly the same point."""
    spec = builder.SPECS["Tanh"]
    op = spec.op()
    arrays = builder.build_1d(spec, step=0.1)
    assert int(arrays["n"]) == 101
    codes = torch.from_numpy(builder.decode(arrays["delta"]).astype(np.int64))
    g = builder.grid_points(spec.lo, spec.hi, 0.1)
    i, j = torch.triu_indices(101, 101, 2)
    c = codes[i, j]
    assert (c != builder.INVALID).all()
    a, b = g[i], g[j]
    coarse = 0.5 * (a + b) + c.double() * float(arrays["unit"])
    shipped = bp.split_point(op, a, b, "opt")
    t_coarse = children_area(op, a, b, coarse)
    t_shipped = children_area(op, a, b, shipped)
    parent = builder.relax_area(op, a, b)
    # the fine table's grid resolution (0.01, plus a parabola step) against the coarse build's
    # continuous search on its narrow pairs: equal up to a fraction of a percent of the parent
    rel = (t_shipped - t_coarse) / parent
    assert rel.max() < 5e-3 and rel.mean() < 1e-4
    assert ((coarse - shipped).abs() <= 0.1).float().mean() > 0.95


def test_build_cli_and_list(tmp_path):
    from genbab.tables_cli import tables

    runner = CliRunner()
    res = runner.invoke(tables, ["build", "--op", "Exp", "--step", "0.1", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "Exp" in res.output and " s " in res.output
    assert (tmp_path / "branch_Exp.npz").is_file() and not (tmp_path / "branch_Mul.npz").exists()
    table = bp.load_table("Exp", tmp_path)
    assert (table.n, table.step) == (101, 0.1)
    res = runner.invoke(tables, ["list", "--dir", str(tmp_path)])
    assert res.exit_code == 0 and "step 0.1" in res.output
    assert runner.invoke(tables, ["build", "--op", "Nope", "--out", str(tmp_path)]).exit_code != 0


# ----------------------------------------------------------------------------- products


def random_boxes(n: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    r = [2.0 * torch.randn(n, generator=gen, dtype=F64) for _ in range(4)]
    return torch.minimum(r[0], r[1]), torch.maximum(r[0], r[1]), torch.minimum(r[2], r[3]), torch.maximum(r[2], r[3])


def product_obj(box, split_x, p):
    lx, ux, ly, uy = box
    t = torch.where(split_x, (p - lx) / (ux - lx), (p - ly) / (uy - ly))
    return builder.product_objective(lx, ux, ly, uy, ~split_x, t)


def test_product_split_opt_beats_uniform():
    box = random_boxes(3000, seed=5)
    so, po = bp.product_split(*box, mode="opt")
    su, pu = bp.product_split(*box, mode="uniform")
    lo_o, hi_o = torch.where(so, box[0], box[2]), torch.where(so, box[1], box[3])
    assert ((lo_o < po) & (po < hi_o)).all()
    lo_u, hi_u = torch.where(su, box[0], box[2]), torch.where(su, box[1], box[3])
    assert torch.allclose(pu, 0.5 * (lo_u + hi_u))
    assert product_obj(box, so, po).sum() < 0.99 * product_obj(box, su, pu).sum()


def test_product_volume_is_split_invariant():
    """Why the product table does not use the volume: it is the same for every midpoint split."""
    lx, ux, ly, uy = (torch.tensor([v], dtype=F64) for v in (-1.0, 3.0, 0.5, 2.0))

    def volume(lx, ux, ly, uy):
        from genbab.ops.bilinear import relax_mul
        r = relax_mul(lx, ux, ly, uy)
        gap = [u.double() - lw.double() for u, lw in zip(r.upper, r.lower)]
        cx, cy = 0.5 * (lx + ux), 0.5 * (ly + uy)
        return (ux - lx) * (uy - ly) * (gap[0] * cx + gap[1] * cy + gap[2])

    split_x = volume(lx, 1.0 + 0 * lx, ly, uy) + volume(1.0 + 0 * lx, ux, ly, uy)
    split_y = volume(lx, ux, ly, 1.25 + 0 * ly) + volume(lx, ux, 1.25 + 0 * ly, uy)
    assert torch.allclose(split_x, split_y, rtol=1e-9)
    assert torch.allclose(split_x, volume(lx, ux, ly, uy) / 2, rtol=1e-9)


def test_product_edge_cases():
    inf = math.inf
    lx = torch.tensor([0.0, -1.0, -inf, 2.0, 1.0, -1.0])
    ux = torch.tensor([0.0, 1.0, 1.0, 2.0, 1.0, 1.0])
    ly = torch.tensor([-1.0, 3.0, 0.0, -inf, 1.0, -1.0])
    uy = torch.tensor([1.0, 3.0, 1.0, inf, 1.0, 1.0])
    for mode in ("opt", "uniform"):
        sx, p = bp.product_split(lx, ux, ly, uy, mode)
        assert sx.tolist()[:4] == [False, True, True, False]
        assert torch.isfinite(p).all()
        lo, hi = torch.where(sx, lx, ly).double(), torch.where(sx, ux, uy).double()
        wide = hi > lo
        assert ((lo < p) & (p < hi))[wide].all()
        assert p[4].item() == 1.0  # a point box: nothing to split, the common value
        assert p[5].item() == 0.0


def test_product_small_build_matches_shipped():
    arrays = builder.build_product(step=0.25, t_den=128)
    shipped = bp.load_table("Mul")
    rho = builder.grid_points(-1.0, 1.0, 0.25)
    c = builder.rho_to_centre(rho)
    cx, cy = torch.meshgrid(c, c, indexing="ij")
    box = (cx - 1, cx + 1, cy - 1, cy + 1)
    coarse_y = torch.from_numpy(arrays["split_y"].astype(bool))
    coarse_t = torch.from_numpy(arrays["t_code"].astype(np.int64)).double() / 128
    coarse_p = torch.where(coarse_y, box[2] + 2 * coarse_t, box[0] + 2 * coarse_t)
    sx, p = bp.product_split(*box, mode="opt")
    assert shipped.n == 81
    assert torch.allclose(product_obj(box, sx, p), product_obj(box, ~coarse_y, coarse_p), rtol=1e-6)
