"""The open-domain store of branch and bound: the lowest bounds come out first, nothing is lost or
duplicated across growth, parameters and groups travel with their domains."""

from __future__ import annotations

import torch

from genbab.bab.domains import DomainBatch
from genbab.bab.store import DomainStore


def batch(lbs, tag: float, params: dict | None = None, group: bool = False) -> DomainBatch:
    """Domains with bounds ``lbs``; every field carries an id (``tag`` + position) to check it travels."""
    lb = torch.tensor(lbs, dtype=torch.float64)
    n = len(lb)
    ids = tag + torch.arange(n, dtype=torch.float64)
    return DomainBatch({"x": ids[:, None].repeat(1, 3)}, {"x": ids[:, None].repeat(1, 3) + 0.5}, lb,
                       torch.arange(n), torch.full((n,), 2), torch.arange(n) + 7, ids,
                       params or {}, torch.arange(n) % 3 if group else None)


def test_pops_lowest_first_across_growth_and_keeps_fields_together() -> None:
    g = torch.Generator().manual_seed(0)
    store, reference = DomainStore(), []
    tag = 0.0
    for step in range(40):
        n = int(torch.randint(1, 900, (1,), generator=g))
        lbs = (torch.rand(n, generator=g, dtype=torch.float64) * 10 - 5).tolist()
        store.push(batch(lbs, tag))
        reference += [(lb, tag + i) for i, lb in enumerate(lbs)]
        tag += 10_000
        k = int(torch.randint(0, 700, (1,), generator=g))
        out = store.pop_lowest(k)
        reference.sort()
        expected, reference = reference[:k], reference[k:]
        assert out.lb.tolist() == [lb for lb, _ in expected]
        assert sorted(out.split_point.tolist()) == sorted(i for _, i in expected)
        assert bool((out.lower["x"][:, 0] == out.split_point).all() and (out.upper["x"][:, 2] == out.split_point + 0.5).all())
        assert len(store) == len(reference)
    assert store.capacity >= len(store) and store.capacity < 4 * max(len(store), 1) + 4096
    rest = store.all()
    assert sorted(rest.lb.tolist()) == sorted(lb for lb, _ in reference)
    assert float(store.min_lb()) == min(lb for lb, _ in reference)


def test_nan_bounds_come_first_and_params_and_groups_travel() -> None:
    store = DomainStore()
    store.push(batch([1.0, 2.0], 0.0, group=True))
    store.push(batch([0.5, float("nan"), 3.0], 100.0, params={"a": torch.ones(3, 2)}, group=True))
    out = store.pop_lowest(2)
    assert torch.isnan(out.lb[0]) and float(out.lb[1]) == 0.5
    assert out.params["a"].shape == (2, 2) and bool((out.params["a"] == 1).all())
    rest = store.pop_lowest(10)
    assert rest.lb.tolist() == [1.0, 2.0, 3.0]
    assert bool(torch.isnan(rest.params["a"][:2]).all()) and bool((rest.params["a"][2] == 1).all())
    assert rest.group.tolist() == [0, 1, 2] and len(store) == 0 and store.groups() == []
