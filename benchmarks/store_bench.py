"""Per-pass cost of keeping the open domains, against how many are open (issue 12 part 5).

One branch-and-bound pass takes the ``take`` open domains with the lowest bounds and adds
``2 take`` children. This times that bookkeeping alone (no bounding) at several open counts, for
input-split domains of ``--inputs`` coordinates (two ``[D, n]`` box tensors, as lsnc), two ways:

- ``batch``: one :class:`~genbab.bab.domains.DomainBatch` (argsort of every bound, ``select`` of
  the parents and of the rest, ``cat`` of the children: the loop before 2026-12-07);
- ``store``: :class:`~genbab.bab.store.DomainStore` (``topk`` over the slots, gather the parents,
  write the children into free slots).

    python benchmarks/store_bench.py                 # 1e3 .. 2e6 open, take 8192, 8 inputs
    python benchmarks/store_bench.py --inputs 154 --take 1024
"""

from __future__ import annotations

import argparse
import time

import torch

from genbab.bab.domains import DomainBatch
from genbab.bab.store import DomainStore


def domains(n: int, inputs: int, gen: torch.Generator) -> DomainBatch:
    lo = torch.rand(n, inputs, generator=gen, dtype=torch.float64)
    zeros = torch.zeros(n, dtype=torch.int64)
    return DomainBatch({"x": lo}, {"x": lo + 0.1}, -torch.rand(n, generator=gen, dtype=torch.float64), zeros,
                       zeros - 1, zeros, torch.zeros(n, dtype=torch.float64))


def pass_batch(open_: DomainBatch, children: DomainBatch, take: int) -> DomainBatch:
    order = torch.argsort(open_.lb)
    parents, open_ = open_.select(order[:take]), open_.select(order[take:])
    return open_.cat(children)


def pass_store(store: DomainStore, children: DomainBatch, take: int) -> None:
    store.pop_lowest(take)
    store.push(children)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--take", type=int, default=8192)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print(f"{'open':>10} {'batch ms/pass':>14} {'store ms/pass':>14}")
    for n_open in (1_000, 10_000, 100_000, 1_000_000, 2_000_000):
        children = domains(2 * args.take, args.inputs, gen)
        open_ = domains(n_open, args.inputs, gen)
        store = DomainStore()
        store.push(open_)
        pass_batch(open_, children, args.take), pass_store(store, children, args.take)  # warm-up
        open_ = domains(n_open, args.inputs, gen)
        store = DomainStore()
        store.push(open_)
        t0 = time.perf_counter()
        for _ in range(args.passes):
            open_ = pass_batch(open_, children, args.take)
        t1 = time.perf_counter()
        for _ in range(args.passes):
            pass_store(store, children, args.take)
        t2 = time.perf_counter()
        print(f"{n_open:>10,} {1e3 * (t1 - t0) / args.passes:>14.1f} {1e3 * (t2 - t1) / args.passes:>14.1f}", flush=True)


if __name__ == "__main__":
    main()
