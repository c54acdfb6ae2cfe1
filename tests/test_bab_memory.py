"""Branch and bound under memory pressure: batch sizing and out-of-memory recovery."""

from __future__ import annotations

import time
from pathlib import Path

import torch

import genbab
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bab.memory import fitting_batch, is_out_of_memory, pass_bytes_per_domain
from genbab.bounds import engine_for

SPECS = Path(genbab.__file__).resolve().parent.parent / "specs"
C_Y2 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
BOX = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def test_batch_fits_half_the_free_memory() -> None:
    per = pass_bytes_per_domain({"a": (10, 20), "b": (30,)}, rows=4, itemsize=8)
    # grows with the rows, the node sizes and the element size
    assert pass_bytes_per_domain({"a": (10, 20), "b": (30,)}, rows=8, itemsize=8) == 2 * per
    assert pass_bytes_per_domain({"a": (10, 20), "b": (30,)}, rows=4, itemsize=4) == per / 2
    assert pass_bytes_per_domain({"a": (10, 20), "b": (60,)}, rows=4, itemsize=8) > per
    assert fitting_batch(64, per, free=1e12) == 64
    small = fitting_batch(64, per, free=per * 20)
    assert small == 10 and small * per <= 0.5 * per * 20
    assert fitting_batch(64, per, free=0) == 2


def test_out_of_memory_is_told_apart_from_other_errors() -> None:
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_search_halves_its_batch_after_out_of_memory_and_still_proves(monkeypatch) -> None:
    """A bound pass on more than one domain "runs out of memory": the search must halve its batch
    down to one domain per pass and still prove the property (y2 above its sampled minimum less 0.05)."""
    model = genbab.load_model(SPECS / "toy_mlp.onnx")
    xs = torch.rand(100_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        floor = float(model.forward_flat(xs.float())[:, 2].min()) - 0.05
    real_bound = BranchAndBound.bound
    sizes = []

    def bound(self, domains, deadline):
        sizes.append(len(domains))
        if len(domains) > 1:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")
        return real_bound(self, domains, deadline)

    monkeypatch.setattr(BranchAndBound, "bound", bound)
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64),
                         BabConfig(input_batch_size=64))
    assert bab.batch == 64
    result = bab.run(time.monotonic() + 60)
    assert result.status == "unsat" and result.batch == 1
    assert max(sizes) == 2 and sizes[-1] == 1
    assert result.visited > 2


def test_slow_passes_take_fewer_parents() -> None:
    """Children whose bound pass would outlast PASS_SECONDS (or the time left) are fewer."""
    from genbab.bab.loop import PASS_SECONDS

    model = genbab.load_model(SPECS / "toy_mlp.onnx")
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.zeros(1, dtype=torch.float64),
                         BabConfig(input_split_max_dims=0, batch_size=64))
    far = time.monotonic() + 1000
    assert bab.parents_per_pass(1e-6, far) == 32  # fast: half the batch
    slow = bab.parents_per_pass(PASS_SECONDS / 8, far)  # 8 children's worth of time
    assert slow == 4 and 2 * slow * PASS_SECONDS / 8 <= PASS_SECONDS
    assert bab.parents_per_pass(10.0, far) == 1  # always some progress
    assert bab.parents_per_pass(1e-3, time.monotonic() + 0.01) <= 5  # little time left
