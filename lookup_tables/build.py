"""Offline construction of the pre-optimized branching-point tables.

1-D ops.  For an elementwise op ``h`` with relaxation ``lower(z) <= h(z) <= upper(z)`` on
``[a, b]`` (straight lines from ``op.relax(a, b)`` with default parameters, float64), the
looseness is the area between the lines,

    area(a, b) = int_a^b (upper - lower) dz = (b - a) * (ds * (a + b) / 2 + db),

``ds``/``db`` the slope/bias differences (upper minus lower).  For every pair of grid points
``g_i < g_j`` (``g_k = lo + k * step``) the table holds

    p*(g_i, g_j) = argmin_{g_i < p < g_j}  area(g_i, p) + area(p, g_j).

Build: ``A[i, k] = area(g_i, g_k)`` for all grid pairs (one batched ``relax`` call), then the
grid minimum ``T[i, j] = min_{i<k<j} A[i, k] + A[k, j]`` is a min-plus matrix product, and the
minimizing ``g_k`` is refined below the grid by the vertex of the parabola through the totals
at ``k-1, k, k+1`` (kept only where a second batched ``relax`` confirms it is better).  Narrow
pairs (``j - i <= 16``, where the grid gives a poor *relative* resolution) are searched
continuously by golden section over ``(g_i, g_j)`` instead.  Pairs
without an interior grid point or with a non-finite area (outside an op's domain) get no entry.

Products ``z = x y`` (McCormick planes of :func:`genbab.ops.bilinear.relax_mul`, default
weights).  The volume between the two planes is ``c * wx^2 * wy^2`` for *every* box (the planes
move by exactly the linear term under a shift of ``x`` or ``y``), so the spec's looseness gives
"midpoint of either factor" everywhere and cannot choose.  The product table therefore
minimizes the concretized looseness: the width ``W`` of the range of ``z`` implied by a child's
planes, ``max_box upper - min_box lower`` (what a bound on ``z`` alone would see), averaged over
the box, i.e. ``t W(child 1) + (1 - t) W(child 2)`` for a split at fraction ``t`` (the plain
sum would favour cutting off slivers).  That objective scales
by ``s`` when one factor is scaled by ``s > 0``, so the optimal (factor, fraction) depends only
on each factor's *position* ``c = (l + u) / (u - l)`` (centre over half-width), stored as
``rho = c / (1 + |c|)`` in ``[-1, 1]`` (``|rho| < 1/2``: the interval straddles 0): a 2-D table
over ``(rho_x, rho_y)`` with no outside.

Storage: one ``.npz`` per table (``np.savez_compressed``).  1-D points as an ``n x n`` int16
matrix ``code[i, j] = round((p - (g_i + g_j) / 2) / unit)``, ``unit = (hi - lo) / 64000``
(``-32768``: no entry), delta-coded along ``j``.  Every grid optimum lies at least ``step / 2``
inside its pair, far more than the rounding ``unit / 2``, so decoded points stay strictly inside.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

F64 = torch.float64
FORMAT_VERSION = 1
OFFSET_LEVELS = 64000  # stored point resolution: (hi - lo) / OFFSET_LEVELS
INVALID = -32768  # int16 code of pairs without an entry
DEFAULT_STEP = 0.01
NARROW_SPAN = 16  # pairs up to this many grid steps wide get a continuous search
CHUNK = 65_536  # relax batch size (cache-friendly; larger is not faster)
TABLE_DIR = Path(__file__).resolve().parent
PRODUCT_KEY = "Mul"
PRODUCT_RHO_STEP = 0.025  # 81 x 81 cells
PRODUCT_T_DEN = 128  # candidate fractions k / 128, k = 1..127
TIE_BREAK = 1e-9  # relative preference for the midpoint among (near-)equal product splits
RHO_EDGE_CENTRE = 1e3  # centre/half-width used for rho = +-1 (interval far from 0)


@dataclass(frozen=True)
class TableSpec:
    """One 1-D table: registry op name, ONNX attributes to bind, grid range ``[lo, hi]``."""

    key: str
    op_name: str
    attrs: dict[str, Any] = field(default_factory=dict)
    lo: float = -5.0
    hi: float = 5.0

    def op(self):
        """The bound registry op (default relaxation parameters are used)."""
        from genbab.ops.registry import elementwise_table

        return elementwise_table()[self.op_name].bind(**self.attrs)


# Log and Sqrt only over their domain; Reciprocal on [-5, 5] (pairs straddling 0 have infinite
# area and get no entry).  Pow (exponent-dependent; x^2 is split best at the midpoint) and the
# piecewise-linear ops (split at 0) have no table.
SPECS: dict[str, TableSpec] = {s.key: s for s in (
    TableSpec("Sigmoid", "Sigmoid"), TableSpec("Tanh", "Tanh"), TableSpec("Erf", "Erf"),
    TableSpec("Sin", "Sin"), TableSpec("Cos", "Cos"),
    TableSpec("Gelu", "Gelu", {"approximate": "none"}),
    TableSpec("Gelu_tanh", "Gelu", {"approximate": "tanh"}),
    TableSpec("Exp", "Exp"), TableSpec("Log", "Log", lo=0.01), TableSpec("Sqrt", "Sqrt", lo=0.0),
    TableSpec("Reciprocal", "Reciprocal"),
)}


def table_path(key: str, folder: Path = TABLE_DIR) -> Path:
    """File of table ``key`` in ``folder``."""
    return Path(folder) / f"branch_{key}.npz"


def grid_size(lo: float, hi: float, step: float) -> int:
    """Number of grid points ``lo + k * step <= hi`` (up to rounding)."""
    return int(math.floor((hi - lo) / step + 1e-9)) + 1


def grid_points(lo: float, hi: float, step: float) -> Tensor:
    """``g_k = lo + k * step`` (float64), the same formula the lookup uses."""
    return lo + step * torch.arange(grid_size(lo, hi, step), dtype=F64)


# ----------------------------------------------------------------------------- 1-D objective


def relax_area(op, a: Tensor, b: Tensor) -> Tensor:
    """``int_a^b (upper - lower) dz`` of ``op.relax(a, b)`` (float64, batched in chunks);
    ``+inf`` where the lines are not finite."""
    out = torch.empty_like(a)
    for s in range(0, a.numel(), CHUNK):
        aa, bb = a[s:s + CHUNK], b[s:s + CHUNK]
        r = op.relax(aa, bb)
        ds = (r.slope_upper - r.slope_lower).to(F64)
        db = (r.bias_upper - r.bias_lower).to(F64)
        area = (bb - aa) * (ds * 0.5 * (aa + bb) + db)
        out[s:s + CHUNK] = torch.where(torch.isfinite(area), area, torch.full_like(area, math.inf))
    return out


def pair_areas(op, g: Tensor) -> Tensor:
    """``A[i, k] = area(g_i, g_k)`` for ``i < k``; ``+inf`` on and below the diagonal."""
    n = g.numel()
    i, k = torch.triu_indices(n, n, 1)
    A = torch.full((n, n), math.inf, dtype=F64)
    A[i, k] = relax_area(op, g[i], g[k])
    return A


def minplus_argmin(A: Tensor, block: int = 8) -> tuple[Tensor, Tensor]:
    """``T[i, j] = min_k A[i, k] + A[k, j]`` and the minimizing ``k`` (min-plus square of an
    upper-triangular matrix, so ``i < k < j``); rows in blocks, columns from the block on."""
    n = A.shape[0]
    T = torch.full((n, n), math.inf, dtype=F64)
    K = torch.zeros((n, n), dtype=torch.long)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        s = r0 + 1  # k and j only range over indices > r0
        if s >= n:
            break
        tot = A[r0:r1, s:, None] + A[None, s:, s:]  # [rows, k, j]
        val, arg = tot.min(dim=1)
        T[r0:r1, s:] = val
        K[r0:r1, s:] = arg + s
    return T, K


def parabola_offset(tm: Tensor, t0: Tensor, tp: Tensor, h: float) -> Tensor:
    """Vertex offset from the middle of three equally spaced (``h``) samples, clamped to
    ``[-h/2, h/2]``; 0 where the samples are not convex or not finite."""
    den = tm - 2.0 * t0 + tp
    ok = torch.isfinite(tm) & torch.isfinite(tp) & (den > 0)
    off = 0.5 * h * (tm - tp) / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, off.clamp(-0.5 * h, 0.5 * h), torch.zeros_like(off))


def refine_points(op, g: Tensor, A: Tensor, T: Tensor, K: Tensor, step: float
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sub-grid refinement of the grid optimum of every valid pair.  Returns the flat pair
    indices ``(i, j)``, the points and their totals (``+inf``: no valid split)."""
    n = g.numel()
    i, j = torch.triu_indices(n, n, 1)
    k = K[i, j]
    best = T[i, j]
    p = g[k]
    inner = (k - 1 > i) & (k + 1 < j) & torch.isfinite(best)
    km, kp = (k - 1).clamp(min=0), (k + 1).clamp(max=n - 1)
    tm = torch.where(inner, A[i, km] + A[km, j], torch.full_like(best, math.inf))
    tp = torch.where(inner, A[i, kp] + A[kp, j], torch.full_like(best, math.inf))
    off = parabola_offset(tm, best, tp, step)
    idx = (off != 0).nonzero().squeeze(1)
    if idx.numel():
        q = p[idx] + off[idx]
        tot = relax_area(op, g[i[idx]], q) + relax_area(op, q, g[j[idx]])
        better = tot < best[idx]
        p[idx] = torch.where(better, q, p[idx])
        best[idx] = torch.where(better, tot, best[idx])
    return i, j, p, best


def golden_section(obj: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Batched golden-section search of ``min obj`` on ``[a, b]`` (unimodal): ``(p, obj(p))``."""
    r = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = obj(c), obj(d)
    for _ in range(iters):
        left = fc < fd  # minimum in [a, d]
        a, b = torch.where(left, a, c), torch.where(left, d, b)
        c_new = torch.where(left, b - r * (b - a), d)
        d_new = torch.where(left, c, a + r * (b - a))
        f_new = obj(torch.where(left, c_new, d_new))
        fc, fd = torch.where(left, f_new, fd), torch.where(left, fc, f_new)
        c, d = c_new, d_new
    pick = fc < fd
    return torch.where(pick, c, d), torch.where(pick, fc, fd)


def refine_narrow(op, g: Tensor, i: Tensor, j: Tensor, p: Tensor, best: Tensor,
                  max_span: int = NARROW_SPAN, iters: int = 24) -> None:
    """Pairs with ``j - i <= max_span`` have few interior grid candidates (relative resolution
    ``1 / (j - i)``); search them continuously over ``(g_i, g_j)`` (nearly quadratic there, so
    unimodal) and keep the result where better.  Updates ``p``, ``best`` in place."""
    idx = ((j - i >= 2) & (j - i <= max_span) & torch.isfinite(best)).nonzero().squeeze(1)
    if idx.numel() == 0:
        return
    a, b = g[i[idx]], g[j[idx]]
    q, tot = golden_section(lambda z: relax_area(op, a, z) + relax_area(op, z, b), a, b, iters)
    better = tot < best[idx]
    p[idx] = torch.where(better, q, p[idx])
    best[idx] = torch.where(better, tot, best[idx])


def offset_unit(lo: float, hi: float) -> float:
    """Resolution of the stored points: ``(hi - lo) / 64000`` (1.5625e-4 on ``[-5, 5]``), so
    every offset from a pair's midpoint fits an int16."""
    return (hi - lo) / OFFSET_LEVELS


def encode(p: Tensor, i: Tensor, j: Tensor, g: Tensor, valid: Tensor, unit: float) -> np.ndarray:
    """``codes[i, j] = round((p - (g_i + g_j) / 2) / unit)`` (int16), ``INVALID`` elsewhere;
    returned delta-coded along ``j`` (wrapping int16), which compresses ~4x better."""
    n = g.numel()
    off = ((p - 0.5 * (g[i] + g[j])) / unit).round().clamp(-32000, 32000)
    codes = torch.full((n, n), INVALID, dtype=torch.int32)
    codes[i[valid], j[valid]] = off[valid].to(torch.int32)
    codes = codes.numpy().astype(np.int16)
    delta = np.diff(codes, axis=1, prepend=np.zeros((n, 1), np.int16))
    assert np.array_equal(decode(delta), codes)
    return delta


def decode(delta: np.ndarray) -> np.ndarray:
    """Inverse of the delta coding of :func:`encode` (wrapping int16 cumulative sum)."""
    return np.cumsum(delta, axis=1, dtype=np.int16)


def build_1d(spec: TableSpec, step: float = DEFAULT_STEP) -> dict[str, np.ndarray]:
    """All arrays of one 1-D table (see the module docstring)."""
    op = spec.op()
    g = grid_points(spec.lo, spec.hi, step)
    with torch.no_grad():
        A = pair_areas(op, g)
        T, K = minplus_argmin(A)
        i, j, p, best = refine_points(op, g, A, T, K, step)
        refine_narrow(op, g, i, j, p, best)
    valid = torch.isfinite(best) & (j - i >= 2)
    unit = offset_unit(spec.lo, spec.hi)
    return {
        "delta": encode(p, i, j, g, valid, unit), "unit": np.float64(unit),
        "lo": np.float64(spec.lo), "step": np.float64(step), "n": np.int64(g.numel()),
        "meta": np.array(json.dumps({"key": spec.key, "op": spec.op_name, "attrs": spec.attrs,
                                     "format": FORMAT_VERSION, "objective": "area"})),
    }


# ----------------------------------------------------------------------------- products


def rho_to_centre(rho: Tensor) -> Tensor:
    """Inverse of ``rho = c / (1 + |c|)``; ``rho = +-1`` maps to ``+-RHO_EDGE_CENTRE``."""
    c = rho / (1.0 - rho.abs()).clamp(min=1.0 / (1.0 + RHO_EDGE_CENTRE))
    return c.clamp(-RHO_EDGE_CENTRE, RHO_EDGE_CENTRE)


def implied_width(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
    """Width of the range of ``x y`` implied by the McCormick planes on the box:
    ``max_box (a_u x + b_u y + c_u) - min_box (a_l x + b_l y + c_l)``."""
    from genbab.ops.bilinear import relax_mul

    r = relax_mul(lx, ux, ly, uy)

    def extreme(plane, pick):
        a, b, c = (t.to(F64) for t in plane)
        return c + pick(a * lx, a * ux) + pick(b * ly, b * uy)

    return extreme(r.upper, torch.maximum) - extreme(r.lower, torch.minimum)


def product_objective(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, split_y: Tensor,
                      t: Tensor) -> Tensor:
    """``t W(left child) + (1 - t) W(right child)``: the implied width ``W`` averaged over the
    box (each child weighted by its share of it) when the chosen factor is split at ``t``."""
    px, py = lx + t * (ux - lx), ly + t * (uy - ly)
    left = implied_width(lx, torch.where(split_y, ux, px), ly, torch.where(split_y, py, uy))
    right = implied_width(torch.where(split_y, lx, px), ux, torch.where(split_y, py, ly), uy)
    return t * left + (1.0 - t) * right


def build_product(step: float = PRODUCT_RHO_STEP, t_den: int = PRODUCT_T_DEN) -> dict[str, np.ndarray]:
    """Product table over ``(rho_x, rho_y)``: which factor to split and the fraction."""
    rho = grid_points(-1.0, 1.0, step)
    cx, cy = torch.meshgrid(rho_to_centre(rho), rho_to_centre(rho), indexing="ij")
    t = torch.arange(1, t_den, dtype=F64) / t_den
    shape = (2, t.numel(), *cx.shape)
    side = torch.tensor([False, True])[:, None, None, None].expand(shape)
    tt = t[None, :, None, None].expand(shape)
    lx, ux = (cx - 1)[None, None].expand(shape), (cx + 1)[None, None].expand(shape)
    ly, uy = (cy - 1)[None, None].expand(shape), (cy + 1)[None, None].expand(shape)
    with torch.no_grad():
        obj = product_objective(*(v.reshape(-1) for v in (lx, ux, ly, uy, side, tt)))
        parent = implied_width(*(v.reshape(-1) for v in (lx, ux, ly, uy)))
    # flat objectives (e.g. a box centred at the origin): prefer the midpoint, then x
    obj = obj + TIE_BREAK * parent * (tt.reshape(-1) - 0.5).abs()
    flat = obj.reshape(2 * t.numel(), -1)
    best = flat.argmin(dim=0).reshape(cx.shape)
    split_y = best >= t.numel()
    code = (best % t.numel() + 1).to(torch.int32)
    return {
        "split_y": split_y.numpy().astype(np.uint8),
        "t_code": code.numpy().astype(np.uint8 if t_den <= 256 else np.uint16),
        "t_den": np.int64(t_den), "rho_step": np.float64(step), "n": np.int64(rho.numel()),
        "meta": np.array(json.dumps({"key": PRODUCT_KEY, "format": FORMAT_VERSION,
                                     "objective": "implied_width"})),
    }


# ----------------------------------------------------------------------------- driver


def save_table(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write one compressed table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


def build_all(keys: list[str] | None = None, out_dir: Path = TABLE_DIR, step: float = DEFAULT_STEP,
              products: bool = True, threads: int = 1,
              report: Callable[[str, float, int], None] | None = None) -> dict[str, float]:
    """Build and save the requested tables; returns ``{key: seconds}`` (build time only).
    One thread by default: on a loaded 2-core machine a second intra-op thread mostly waits."""
    torch.set_num_threads(threads)
    keys = list(SPECS) if keys is None else keys
    times: dict[str, float] = {}
    jobs: list[tuple[str, Callable[[], dict[str, np.ndarray]]]] = [
        (k, lambda k=k: build_1d(SPECS[k], step)) for k in keys]
    if products:
        jobs.append((PRODUCT_KEY, build_product))
    for key, job in jobs:
        start = time.perf_counter()
        arrays = job()
        times[key] = time.perf_counter() - start
        path = table_path(key, out_dir)
        save_table(arrays, path)
        if report is not None:
            report(key, times[key], path.stat().st_size)
    return times
