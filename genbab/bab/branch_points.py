"""Where to split a neuron's interval: pre-optimized branching points (run-time lookup).

``split_point(op, lo, hi, mode)`` for elementwise ops, ``product_split(lx, ux, ly, uy, mode)``
for products ``x y`` (which factor, and where) and ``factor_split_point(lx, ux, ly, uy, mode)``
for a split of the factor ``x`` of ``x y`` (the table's fraction where the table picks ``x``
for that box, else the midpoint).  Modes:

* ``"opt"``: the tables of :mod:`genbab.lookup_tables.build`.  1-D: ``[lo, hi]`` is rounded
  inward to the grid (``g_i >= lo``, ``g_j <= hi``, ``g_k = grid_lo + k step``) and
  ``p*(g_i, g_j)``, the point minimizing the children's total relaxation area, is read and
  transferred to ``[lo, hi]`` at the same relative position; where
  the rounded pair has no entry (outside the grid, ``j - i < 2``, outside the op's domain) the
  midpoint is used.  Products: the factor and fraction minimizing the children's implied
  range width, read at the nearest cell of ``rho = c / (1 + |c|)``, ``c = (l + u) / (u - l)``.
* ``"uniform"``: the midpoint (ablation); products split the factor with the larger
  ``width * max|other factor|`` (its share of the product's range).

Both modes split piecewise-linear ops (ReLU, LeakyRelu, Sign) at their kink when it is inside.
Every point returned for an interval with ``lo < hi`` lies strictly inside it (computed in
float64: for float32 bounds this always exists; for two adjacent float64 values it cannot).
Infinite bounds: ``(-inf, inf) -> 0``, ``[l, inf) -> l + max(1, |l|)``, mirrored for ``-inf``.
The default mode is ``"opt"``, or the environment variable ``GENBAB_BRANCHING_POINTS``
(``opt`` | ``uniform``), or whatever :func:`set_default_mode` set (the CLI's
``--branching-points``).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

F64 = torch.float64
MODES = ("opt", "uniform")
PRODUCT_KEY = "Mul"
INVALID = -32768
_DEFAULT_MODE: list[str | None] = [None]
_LOCK = threading.Lock()


def table_dir() -> Path:
    """The shipped tables: the ``genbab.lookup_tables`` package folder."""
    import genbab.lookup_tables as pkg

    return Path(pkg.__file__).resolve().parent


def set_default_mode(mode: str | None) -> None:
    """Set the mode used when none is passed (``None``: back to the environment / ``opt``)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"branching-point mode must be one of {MODES}, got {mode!r}")
    _DEFAULT_MODE[0] = mode


def default_mode() -> str:
    """:func:`set_default_mode`'s value, else ``$GENBAB_BRANCHING_POINTS``, else ``opt``."""
    mode = _DEFAULT_MODE[0] or os.environ.get("GENBAB_BRANCHING_POINTS", "opt").strip().lower()
    if mode not in MODES:
        raise ValueError(f"GENBAB_BRANCHING_POINTS must be one of {MODES}, got {mode!r}")
    return mode


def _mode(mode: str | None) -> str:
    mode = default_mode() if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"branching-point mode must be one of {MODES}, got {mode!r}")
    return mode


# ----------------------------------------------------------------------------- tables


@dataclass
class Table1D:
    """``p*(g_i, g_j) = (g_i + g_j) / 2 + codes[i, j] * unit`` for grid ``g_k = lo + k step``."""

    lo: float
    step: float
    n: int
    unit: float
    codes: Tensor  # int16 [n, n], INVALID where there is no entry
    _on: dict[torch.device, Tensor] = field(default_factory=dict, repr=False)

    def codes_on(self, device: torch.device) -> Tensor:
        """The code matrix on ``device`` (copied once)."""
        if device not in self._on:
            self._on[device] = self.codes.to(device)
        return self._on[device]


@dataclass
class ProductTable:
    """Per cell ``(rho_x, rho_y)`` (grid ``-1 + k step``): split y?, fraction ``t_code / t_den``."""

    step: float
    n: int
    t_den: int
    split_y: Tensor  # bool [n, n]
    t_code: Tensor  # int32 [n, n]
    _on: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(split_y, t)`` on ``device``."""
        if device not in self._on:
            t = self.t_code.to(F64) / self.t_den
            self._on[device] = (self.split_y.to(device), t.to(device))
        return self._on[device]


_CACHE: dict[tuple[str, str], Table1D | ProductTable | None] = {}


def _read(key: str, folder: Path) -> Table1D | ProductTable | None:
    path = folder / f"branch_{key}.npz"
    if not path.is_file():
        return None
    with np.load(path) as z:
        if "rho_step" in z.files:  # a product table (cells of the two factors' rho)
            return ProductTable(float(z["rho_step"]), int(z["n"]), int(z["t_den"]),
                                torch.from_numpy(z["split_y"].astype(bool)),
                                torch.from_numpy(z["t_code"].astype(np.int32)))
        codes = np.cumsum(z["delta"], axis=1, dtype=np.int16)
        return Table1D(float(z["lo"]), float(z["step"]), int(z["n"]), float(z["unit"]),
                       torch.from_numpy(codes))


def load_table(key: str, folder: Path | None = None) -> Table1D | ProductTable | None:
    """Table ``key`` (``None`` when there is none), read once and cached."""
    folder = table_dir() if folder is None else Path(folder)
    ck = (key, str(folder))
    with _LOCK:
        if ck not in _CACHE:
            _CACHE[ck] = _read(key, folder)
        return _CACHE[ck]


def available_tables(folder: Path | None = None) -> list[str]:
    """Keys of the tables in ``folder`` (default: the shipped ones)."""
    folder = table_dir() if folder is None else Path(folder)
    return sorted(p.stem[len("branch_"):] for p in folder.glob("branch_*.npz"))


def load_all(folder: Path | None = None) -> dict[str, Table1D | ProductTable | None]:
    """Every table of ``folder``, loaded (and cached)."""
    return {k: load_table(k, folder) for k in available_tables(folder)}


def clear_cache() -> None:
    """Forget loaded tables (after a rebuild)."""
    with _LOCK:
        _CACHE.clear()


def table_meta(key: str, folder: Path | None = None) -> dict:
    """The JSON metadata stored with a table."""
    folder = table_dir() if folder is None else Path(folder)
    with np.load(folder / f"branch_{key}.npz") as z:
        return json.loads(str(z["meta"]))


# ----------------------------------------------------------------------------- 1-D ops


def table_key(op) -> str | None:
    """Table name of an op: the ``table`` its registry traits name (``Gelu_tanh`` for the
    tanh-form GeLU; None: it has none); a plain string is taken as the key itself."""
    if isinstance(op, str):
        return op
    return op.traits.table


def _traits(op):
    if not isinstance(op, str):
        return op.traits
    from genbab.ops.registry import elementwise_table

    entry = elementwise_table().get(op.split("_")[0])
    return None if entry is None else entry.traits


def fallback_point(lo: Tensor, hi: Tensor) -> Tensor:
    """Midpoint ``lo/2 + hi/2`` (no overflow); for infinite ends ``0`` (both), ``l + max(1, |l|)``
    (``hi = inf``) or ``u - max(1, |u|)`` (``lo = -inf``)."""
    mid = 0.5 * lo + 0.5 * hi
    lo_inf, hi_inf = torch.isinf(lo), torch.isinf(hi)
    up = lo + torch.clamp(lo.abs(), min=1.0)
    down = hi - torch.clamp(hi.abs(), min=1.0)
    out = torch.where(lo_inf & hi_inf, torch.zeros_like(mid), mid)
    out = torch.where(hi_inf & ~lo_inf, up, out)
    return torch.where(lo_inf & ~hi_inf, down, out)


def _inside(p: Tensor, lo: Tensor, hi: Tensor, fallback: Tensor) -> Tensor:
    """``p`` where strictly inside ``(lo, hi)``, else ``fallback``."""
    return torch.where((p > lo) & (p < hi), p, fallback)


def _table_fraction(table: Table1D, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """``(t, ok)``: relative position ``(p* - g_i) / (g_j - g_i)`` of the table point of
    ``[lo, hi]`` rounded inward to the grid (``g_i >= lo``, ``g_j <= hi``)."""
    g0, h, n = table.lo, table.step, table.n
    # a bound within 1e-6 steps of a grid point counts as on it (the point is transferred by
    # relative position, so a grid end a hair outside [lo, hi] is harmless)
    i = torch.ceil((lo - g0) / h - 1e-6)
    j = torch.floor((hi - g0) / h + 1e-6)
    ok = torch.isfinite(lo) & torch.isfinite(hi) & (i >= 0) & (j <= n - 1) & (j - i >= 2)
    ii = torch.where(ok, i, torch.zeros_like(i)).long()
    jj = torch.where(ok, j, torch.full_like(j, n - 1)).long()
    code = table.codes_on(lo.device)[ii, jj]
    ok = ok & (code != INVALID)
    width = h * (jj - ii).to(F64)
    return 0.5 + code.to(F64) * table.unit / width, ok


def split_point(op, lo: Tensor, hi: Tensor, mode: str | None = None) -> Tensor:
    """Float64 split points for intervals ``[lo, hi]`` (any shape, any float dtype).

    ``op``: an :class:`~genbab.ops.relaxation.ElementwiseOp` or a table key (``"Sigmoid"``,
    ``"Gelu_tanh"``...).  Piecewise-linear ops: their kink when inside; ``opt``: where the
    inward-rounded pair ``[g_i, g_j]`` has an entry, ``lo + t (hi - lo)`` with ``t`` the relative
    position of ``p*(g_i, g_j)`` in its pair (equal to ``p*`` up to one grid step, and right
    for narrow intervals, where rounding changes the width a lot); otherwise
    :func:`fallback_point`.  The
    result is strictly inside ``(lo, hi)`` wherever such a float64 exists.
    """
    mode = _mode(mode)
    lo, hi = torch.broadcast_tensors(lo.to(F64), hi.to(F64))
    fb = fallback_point(lo, hi)
    point = fb
    traits = _traits(op)
    if traits is not None and traits.kind == "piecewise_linear" and traits.split_point is not None:
        kink = torch.full_like(fb, traits.split_point)
        return torch.where((lo < kink) & (kink < hi), kink, fb)
    key = table_key(op)
    if mode == "opt" and key is not None:
        table = load_table(key)
        if isinstance(table, Table1D) and lo.numel():
            t, ok = _table_fraction(table, lo, hi)
            point = torch.where(ok, lo + t * (hi - lo), fb)
    return _inside(point, lo, hi, fb)


# ----------------------------------------------------------------------------- products


def _uniform_product(lx, ux, ly, uy) -> Tensor:
    """Split x iff ``wx max(|ly|, |uy|) >= wy max(|lx|, |ux|)``."""
    mx = torch.maximum(lx.abs(), ux.abs())
    my = torch.maximum(ly.abs(), uy.abs())
    return (ux - lx) * my >= (uy - ly) * mx


def _rho_index(l: Tensor, u: Tensor, table: ProductTable) -> Tensor:
    """Nearest cell of ``rho = c / (1 + |c|)``, ``c = (l + u) / (u - l)`` (0 where undefined)."""
    w = u - l
    c = (0.5 * l + 0.5 * u) / (0.5 * torch.where(w > 0, w, torch.ones_like(w)))
    rho = c / (1.0 + c.abs())
    rho = torch.where(torch.isfinite(c), rho, torch.sign(c).nan_to_num(0.0))
    return torch.round((rho + 1.0) / table.step).clamp(0, table.n - 1).long()


def product_split(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, mode: str | None = None, key: str = PRODUCT_KEY
                  ) -> tuple[Tensor, Tensor]:
    """``(split_x, point)`` for ``z = x y`` on the box ``[lx, ux] x [ly, uy]`` (broadcast).

    ``split_x``: bool, True to split ``x`` (else ``y``); ``point``: float64, strictly inside
    the chosen interval when it has positive width.  A factor of zero width is never chosen
    when the other has positive width; a factor with an infinite bound is always chosen.
    """
    mode = _mode(mode)
    lx, ux, ly, uy = torch.broadcast_tensors(*(t.to(F64) for t in (lx, ux, ly, uy)))
    split_x = _uniform_product(lx, ux, ly, uy)
    t = torch.full_like(lx, 0.5)
    table = load_table(key) if mode == "opt" and key is not None else None
    if isinstance(table, ProductTable) and lx.numel():
        sy, tt = table.on(lx.device)
        ix, iy = _rho_index(lx, ux, table), _rho_index(ly, uy, table)
        split_x, t = ~sy[ix, iy], tt[ix, iy]
    wx, wy = ux - lx, uy - ly
    split_x = torch.where((wy > 0) & ~(wx > 0), torch.zeros_like(split_x), split_x)
    split_x = torch.where((wx > 0) & ~(wy > 0), torch.ones_like(split_x), split_x)
    inf_x = torch.isinf(lx) | torch.isinf(ux)
    inf_y = torch.isinf(ly) | torch.isinf(uy)
    split_x = (split_x | inf_x) & ~(inf_y & ~inf_x)
    lo, hi = torch.where(split_x, lx, ly), torch.where(split_x, ux, uy)
    fb = fallback_point(lo, hi)
    point = torch.where(torch.isfinite(lo) & torch.isfinite(hi), lo + t * (hi - lo), fb)
    return split_x, _inside(point, lo, hi, fb)


def factor_split_point(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor, mode: str | None = None,
                       key: str = PRODUCT_KEY) -> Tensor:
    """Float64 points to split the factor ``x`` of ``z = x y`` on ``[lx, ux] x [ly, uy]`` (broadcast):
    ``lx + t (ux - lx)`` with the product table's fraction ``t`` where the table (``opt``) picks
    ``x`` for the box's cell, the midpoint elsewhere (and in ``uniform`` mode). Strictly inside
    ``(lx, ux)`` where such a float64 exists; infinite ends as :func:`fallback_point`. ``key``: the
    product table (the product op's ``table`` trait)."""
    mode = _mode(mode)
    lx, ux, ly, uy = torch.broadcast_tensors(*(t.to(F64) for t in (lx, ux, ly, uy)))
    fb = fallback_point(lx, ux)
    table = load_table(key) if mode == "opt" and key is not None else None
    if not isinstance(table, ProductTable) or not lx.numel():
        return _inside(fb, lx, ux, fb)
    sy, tt = table.on(lx.device)
    ix, iy = _rho_index(lx, ux, table), _rho_index(ly, uy, table)
    use = ~sy[ix, iy] & torch.isfinite(lx) & torch.isfinite(ux)
    point = torch.where(use, lx + tt[ix, iy] * (ux - lx), fb)
    return _inside(point, lx, ux, fb)
