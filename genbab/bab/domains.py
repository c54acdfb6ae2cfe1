"""A batch of branch-and-bound subproblems, held as tensors.

Domain ``k`` is the part of the case's input box where every split neuron satisfies
``lower[node][k] <= z <= upper[node][k]`` (``-inf``/``+inf`` where unsplit). Each domain carries
its best lower bound ``lb`` (over the case's rows; ``> 0`` proves it), its depth, and the split
chosen for it when it was bounded (candidate node index, flat neuron index, split point), and
the relaxation parameters and split multipliers its bound ended with (``params``, by the keys of
:func:`genbab.bounds.alpha.optimize_rows`'s ``warm``), which its children start from. A search
over several input boxes at once also keeps each domain's ``group`` (its box and its rows).
Batches are never mutated in place: ``select`` and ``cat`` build new ones. Every tensor of a
batch lives on the bound engine's device (:func:`root_domains` takes it; the rest follows), and
no operation here reads a value back to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class DomainBatch:
    lower: dict[str, torch.Tensor]  # per candidate node: [D, *shape]
    upper: dict[str, torch.Tensor]
    lb: torch.Tensor  # [D]
    depth: torch.Tensor  # [D] int64
    split_node: torch.Tensor  # [D] int64, index into the candidate node list (-1: nothing to split)
    split_index: torch.Tensor  # [D] int64, flat neuron index within that node
    split_point: torch.Tensor  # [D] float64
    params: dict[str, torch.Tensor] = field(default_factory=dict)  # [D, S, *shape] each; NaN: none
    group: torch.Tensor | None = None  # [D] int64: the input box (and rows) a domain belongs to; None: one box

    def __len__(self) -> int:
        return int(self.lb.shape[0])

    def select(self, idx: torch.Tensor) -> "DomainBatch":
        return DomainBatch({k: v[idx] for k, v in self.lower.items()}, {k: v[idx] for k, v in self.upper.items()},
                           self.lb[idx], self.depth[idx], self.split_node[idx], self.split_index[idx],
                           self.split_point[idx], {k: v[idx] for k, v in self.params.items()},
                           None if self.group is None else self.group[idx])

    def cat(self, other: "DomainBatch") -> "DomainBatch":
        if len(other) == 0:
            return self
        if len(self) == 0:
            return other
        return DomainBatch({k: torch.cat([v, other.lower[k]]) for k, v in self.lower.items()},
                           {k: torch.cat([v, other.upper[k]]) for k, v in self.upper.items()},
                           torch.cat([self.lb, other.lb]), torch.cat([self.depth, other.depth]),
                           torch.cat([self.split_node, other.split_node]),
                           torch.cat([self.split_index, other.split_index]),
                           torch.cat([self.split_point, other.split_point]), _cat_params(self, other),
                           None if self.group is None else torch.cat([self.group, other.group]))

    def clamps(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The split constraints as the engine's per-node clamps."""
        return {k: (self.lower[k], self.upper[k]) for k in self.lower}


def _cat_params(a: DomainBatch, b: DomainBatch) -> dict[str, torch.Tensor]:
    """Both batches' parameters, NaN-filled where one batch lacks a key."""
    out = {}
    for key in a.params.keys() | b.params.keys():
        ref = a.params.get(key, b.params.get(key))
        parts = [x.params.get(key, torch.full((len(x), *ref.shape[1:]), torch.nan, dtype=ref.dtype, device=ref.device))
                 for x in (a, b)]
        out[key] = torch.cat(parts)
    return out


def root_domains(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype,
                 device: torch.device | str = "cpu", groups: int = 0) -> DomainBatch:
    """One domain without splits, on ``device``; with ``groups``, one per group (``group`` 0, 1, ...)."""
    n = max(1, groups)
    lower = {k: torch.full((n, *s), -torch.inf, dtype=dtype, device=device) for k, s in shapes.items()}
    upper = {k: torch.full((n, *s), torch.inf, dtype=dtype, device=device) for k, s in shapes.items()}
    zero = torch.zeros(n, dtype=torch.int64, device=device)
    group = torch.arange(n, device=device) if groups else None
    return DomainBatch(lower, upper, torch.full((n,), -torch.inf, dtype=torch.float64, device=device), zero,
                       zero - 1, zero, torch.zeros(n, dtype=torch.float64, device=device), group=group)


def split(domains: DomainBatch, candidates: list[str]) -> DomainBatch:
    """Both children of every domain: ``z <= p`` (first half) and ``z >= p`` (second half), each
    starting from the parent's parameters. Sync-free: each candidate's split is a masked scatter
    (domains split elsewhere write their own value back)."""
    left_lower = {k: v.clone() for k, v in domains.lower.items()}
    left_upper = {k: v.clone() for k, v in domains.upper.items()}
    right_lower = {k: v.clone() for k, v in domains.lower.items()}
    right_upper = {k: v.clone() for k, v in domains.upper.items()}
    n = len(domains)
    for c, name in enumerate(candidates if n else []):
        here = domains.split_node == c
        for bounds in (left_upper[name], right_lower[name]):
            flat = bounds.view(n, -1)
            idx = domains.split_index.clamp(0, flat.shape[1] - 1).unsqueeze(1)
            value = torch.where(here, domains.split_point.to(flat.dtype), flat.gather(1, idx).squeeze(1))
            flat.scatter_(1, idx, value.unsqueeze(1))
    device = domains.lb.device
    children = DomainBatch(left_lower, left_upper, domains.lb.clone(), domains.depth + 1,
                           torch.full((n,), -1, dtype=torch.int64, device=device),
                           torch.zeros(n, dtype=torch.int64, device=device),
                           torch.zeros(n, dtype=torch.float64, device=device), domains.params, domains.group)
    return children.cat(DomainBatch(right_lower, right_upper, domains.lb.clone(), domains.depth + 1,
                                    children.split_node.clone(), children.split_index.clone(),
                                    children.split_point.clone(), domains.params, domains.group))
