"""The open domains of branch and bound, kept in slot buffers that grow but are never copied whole.

A pass of branch and bound takes the ``k`` open domains with the lowest bounds and adds their
unproved children. Kept as one :class:`~genbab.bab.domains.DomainBatch`, that costs a sort and a
copy of every open domain per pass (``select`` of the rest, ``cat`` of the children): with a
million open sub-boxes the copies dominate. Here every field of the batch lives in a buffer of
``capacity`` slots with a ``valid`` mask:

- :meth:`push` writes new domains into free slots (the buffers double when full: amortised
  ``O(1)`` per domain);
- :meth:`pop_lowest` picks the ``k`` lowest valid bounds with ``topk`` (``O(capacity)``
  elementwise work, no copy of the set), gathers them and frees their slots;

so a pass costs the same whether 10^3 or 10^6 domains are open, up to that elementwise scan.
Everything stays on the domains' device; only :meth:`__len__` is a host integer, kept by count.
"""

from __future__ import annotations

import torch

from genbab.bab.domains import DomainBatch

MIN_CAPACITY = 1024


class DomainStore:
    """Open domains in slot buffers (see the module docstring)."""

    def __init__(self) -> None:
        self.slots: DomainBatch | None = None  # every field [capacity, ...]
        self.valid: torch.Tensor | None = None  # [capacity] bool
        self.key: torch.Tensor | None = None  # [capacity] the bound to order by: +inf in free slots, NaN as -inf
        self.count = 0

    def __len__(self) -> int:
        return self.count

    @property
    def capacity(self) -> int:
        return 0 if self.valid is None else int(self.valid.shape[0])

    def push(self, domains: DomainBatch) -> None:
        """Store every domain of ``domains`` (in free slots)."""
        n = len(domains)
        if n == 0:
            return
        if self.slots is None:
            self._allocate(domains, max(MIN_CAPACITY, 2 * n))
        if self.capacity - self.count < n:
            self._grow(max(2 * self.capacity, self.count + n))
        self._add_missing_params(domains)
        free = torch.nonzero(~self.valid).flatten()[:n]
        slots = self.slots
        for name, t in domains.lower.items():
            slots.lower[name][free] = t
        for name, t in domains.upper.items():
            slots.upper[name][free] = t
        for field in ("lb", "depth", "split_node", "split_index", "split_point"):
            getattr(slots, field)[free] = getattr(domains, field)
        for key, buf in slots.params.items():
            buf[free] = domains.params[key] if key in domains.params else torch.nan
        if slots.group is not None:
            slots.group[free] = domains.group
        self.key[free] = torch.nan_to_num(domains.lb.to(self.key.dtype), nan=-torch.inf)  # NaN proves nothing: first
        self.valid[free] = True
        self.count += n

    def pop_lowest(self, k: int) -> DomainBatch:
        """Remove and return the ``k`` valid domains with the lowest bounds (all if fewer), lowest first."""
        k = min(k, self.count)
        if k == 0:
            return self._empty()
        idx = torch.topk(self.key, k, largest=False, sorted=True).indices
        out = self.slots.select(idx)
        self.valid[idx] = False
        self.key[idx] = torch.inf
        self.count -= k
        return out

    def all(self) -> DomainBatch:
        """Every stored domain (a copy), in slot order."""
        if self.count == 0:
            return self._empty()
        return self.slots.select(torch.nonzero(self.valid).flatten())

    def min_lb(self) -> torch.Tensor:
        """The lowest bound among the stored domains (``+inf`` when none, ``-inf`` for a NaN), a 0-d tensor."""
        if self.slots is None:
            return torch.tensor(torch.inf, dtype=torch.float64)
        return self.key.min()

    def max_depth(self) -> torch.Tensor:
        if self.count == 0:
            return torch.zeros((), dtype=torch.int64)
        return torch.where(self.valid, self.slots.depth, torch.zeros_like(self.slots.depth)).max()

    def groups(self) -> list[int]:
        """The groups with a stored domain, ascending (several boxes in one search)."""
        if self.count == 0 or self.slots.group is None:
            return []
        return torch.unique(self.slots.group[self.valid]).tolist()

    def param_bytes(self) -> int:
        """Bytes of the stored parameters per domain (alpha/beta values kept for the children)."""
        if self.slots is None:
            return 0
        return sum(v[0].numel() * v.element_size() for v in self.slots.params.values())

    # ----------------------------------------------------------------------------- buffers
    def _allocate(self, like: DomainBatch, capacity: int) -> None:
        def empty(t: torch.Tensor, fill) -> torch.Tensor:
            return torch.full((capacity, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)

        self.slots = _mapped(like, empty)
        self.valid = torch.zeros(capacity, dtype=torch.bool, device=like.lb.device)
        self.key = torch.full((capacity,), torch.inf, dtype=torch.float64, device=like.lb.device)

    def _grow(self, capacity: int) -> None:
        extra = capacity - self.capacity

        def grown(t: torch.Tensor, fill) -> torch.Tensor:
            return torch.cat([t, torch.full((extra, *t.shape[1:]), fill, dtype=t.dtype, device=t.device)])

        self.slots = _mapped(self.slots, grown)
        self.valid = grown(self.valid, False)
        self.key = grown(self.key, torch.inf)

    def _add_missing_params(self, domains: DomainBatch) -> None:
        for key, value in domains.params.items():
            if key not in self.slots.params:
                self.slots.params[key] = torch.full((self.capacity, *value.shape[1:]), torch.nan, dtype=value.dtype,
                                                    device=value.device)

    def _empty(self) -> DomainBatch:
        return self.slots.select(torch.zeros(0, dtype=torch.int64, device=self.slots.lb.device))


def _mapped(batch: DomainBatch, fn) -> DomainBatch:
    """``fn(tensor, fill)`` applied to every field, with each field's fill value for empty slots."""
    return DomainBatch({k: fn(v, 0) for k, v in batch.lower.items()}, {k: fn(v, 0) for k, v in batch.upper.items()},
                       fn(batch.lb, torch.inf), fn(batch.depth, 0), fn(batch.split_node, -1),
                       fn(batch.split_index, 0), fn(batch.split_point, 0),
                       {k: fn(v, torch.nan) for k, v in batch.params.items()},
                       None if batch.group is None else fn(batch.group, 0))
