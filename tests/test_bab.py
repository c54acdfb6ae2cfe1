"""Branch and bound: splitting mechanics, proofs beyond alpha-CROWN, and no false proofs."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

import genbab
from genbab.attack.pgd import Attacker
from genbab.attack.witness import Replayer
from genbab.bab.domains import root_domains, split
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import compute_bounds, engine_for

SPECS = Path(genbab.__file__).resolve().parent.parent / "specs"
C_Y2 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
BOX = (-torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64))


def toy() -> genbab.Model:
    return genbab.load_model(SPECS / "toy_mlp.onnx")


def sampled_min_y2(model: genbab.Model) -> float:
    xs = torch.rand(100_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        return float(model.forward_flat(xs.float())[:, 2].min())


def floor_spec(tmp_path: Path, floor: float, name: str = "tight.vnnlib") -> Path:
    """A VNN-LIB file: ``x in [-1, 1]^2`` and the unsafe set ``Y_2 <= floor``."""
    path = tmp_path / name
    lines = [f"(declare-const X_{i} Real)" for i in range(2)] + [f"(declare-const Y_{j} Real)" for j in range(3)]
    lines += [f"(assert (>= X_{i} -1.0))\n(assert (<= X_{i} 1.0))" for i in range(2)]
    lines += [f"(assert (<= Y_2 {floor!r}))"]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_split_halves_the_chosen_neuron() -> None:
    shapes = {"a": (1, 4), "b": (3,)}
    root = root_domains(shapes, torch.float64)
    root = type(root)(root.lower, root.upper, root.lb, root.depth, torch.tensor([0]), torch.tensor([2]),
                      torch.tensor([0.5], dtype=torch.float64))
    children = split(root, ["a", "b"])
    assert len(children) == 2 and children.depth.tolist() == [1, 1]
    assert children.upper["a"][0, 0, 2] == 0.5 and children.lower["a"][1, 0, 2] == 0.5
    assert torch.isinf(children.lower["a"][0]).all() and torch.isinf(children.upper["a"][1]).all()
    assert torch.isinf(children.lower["b"]).all()


def test_bab_proves_what_alpha_crown_cannot() -> None:
    """y2 >= floor over [-1, 1]^2 with floor just below the sampled minimum (by 0.05)."""
    model = toy()
    floor = sampled_min_y2(model) - 0.05
    lb, _ = compute_bounds(model, *BOX, "alpha-crown", C_Y2)
    assert float(lb) < floor  # bounds alone fall short
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64))
    result = bab.run(time.monotonic() + 60)
    assert result.status == "unsat" and result.visited > 1


def run_with_domain_attack(model: genbab.Model, floor: float, config: BabConfig, seconds: float):
    """BaB on ``y2 >= floor`` over BOX with the domain attack wired in as :func:`genbab.api.run_bab` does."""
    spec = genbab.Spec(BOX[0].reshape(1, -1), BOX[1].reshape(1, -1), C_Y2.reshape(1, 1, -1),
                       torch.tensor([[floor]], dtype=torch.float64))
    attacker = Attacker(model, spec, Replayer(model, spec))

    def attack(x, rows, lo, hi, until):
        return attacker.descend(x, torch.zeros(len(x), dtype=torch.int64), lo, hi, until, 10)

    bab = BranchAndBound(engine_for(model), spec.lower[0], spec.upper[0], spec.C[0], spec.d[0], config,
                         attack=attack)
    return bab.run(time.monotonic() + seconds)


def assert_replayed_counterexample(model: genbab.Model, result, floor: float) -> None:
    """``sat`` with a witness that lies in BOX and whose onnxruntime output has ``y2 - floor < 0``
    (replayed here, independently of the library's own replay)."""
    assert result.status == "sat", f"{result.status}: a counterexample exists"
    assert result.witness is not None
    x = np.asarray(result.witness.x)
    assert x.shape == (2,)
    assert np.all(x.astype(np.float64) >= BOX[0].numpy()) and np.all(x.astype(np.float64) <= BOX[1].numpy())
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    y = session.run(None, {model.input_name: x.reshape(model.onnx_input_shape).astype(model.np_dtype)})[0]
    margin = float(C_Y2[0].numpy() @ np.asarray(y, dtype=np.float64).reshape(-1)) - floor
    assert margin < 0, f"witness does not violate: margin {margin}"
    with torch.no_grad():  # the model's own forward agrees
        y_torch = model.forward_flat(torch.from_numpy(x.astype(model.np_dtype)).reshape(1, -1))
    assert float(y_torch[0, 2]) - floor < 0


def test_bab_never_proves_a_violated_property() -> None:
    """y2 >= floor with floor above the sampled minimum is false: BaB (neuron and input splits)
    must answer ``sat`` with a witness that replays."""
    model = toy()
    floor = sampled_min_y2(model) + 0.01
    for input_split in (0, 32):
        result = run_with_domain_attack(model, floor, BabConfig(input_split_max_dims=input_split), 20)  # ends at the first witness
        assert_replayed_counterexample(model, result, floor)


def test_neuron_splits_with_beta_prove_without_input_splits() -> None:
    """Only hidden-neuron splits (beta-CROWN) on a gap of 0.2."""
    model = toy()
    floor = sampled_min_y2(model) - 0.2
    bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64),
                         BabConfig(input_split_max_dims=0))
    assert bab.run(time.monotonic() + 60).status == "unsat"


def test_verify_uses_bab_and_no_bab_turns_it_off(tmp_path: Path) -> None:
    model = toy()
    floor = sampled_min_y2(model) - 0.05
    spec_path = floor_spec(tmp_path, floor)
    result = genbab.verify(model, spec_path, timeout=60)
    assert result.status == "unsat" and result.stats["bab"]["proved_cases"] == 1
    result = genbab.verify(model, spec_path, timeout=4, bab=False)
    assert result.status == "timeout"


def test_branch_and_bound_reports_live_progress(tmp_path: Path, capsys) -> None:
    """Progress events after every batch: growing domain counts, the worst open bound, and a
    line on stderr from the command line's reporter."""
    from genbab.api import BabProgress
    from genbab.progress import ProgressReporter

    model = toy()
    floor = sampled_min_y2(model) - 0.05
    spec_path = floor_spec(tmp_path, floor)
    events = []
    result = genbab.verify(model, spec_path, timeout=60, progress=lambda *e: events.append(e))
    assert result.status == "unsat"
    bab = [stats for phase, stats, _ in events if phase == "bab"]
    assert len(bab) >= 2 and all(isinstance(s, BabProgress) for s in bab)
    visited = [s.visited for s in bab]
    assert visited == sorted(visited) and visited[-1] == result.stats["bab"]["cases"][0]["visited"]
    assert bab[-1].open == 0 and bab[0].worst_bound < 0
    with ProgressReporter(interval_s=0.0) as reporter:
        reporter("bab", bab[0], 12.0)
    err = capsys.readouterr().err
    assert "branch and bound, case 0" in err and f"{bab[0].visited} domains bounded" in err


def two_case_spec(model: genbab.Model, floors: tuple[float, float]) -> genbab.Spec:
    """Two cases over BOX: ``y2 <= floors[0]`` (its row twice) and ``y1 <= floors[1]`` (padded with
    ``0 y <= 1``, as the VNN-LIB reader pads short cases)."""
    C = torch.zeros(2, 2, 3, dtype=torch.float64)
    d = torch.ones(2, 2, dtype=torch.float64)
    C[0, 0, 2], d[0, 0] = 1.0, floors[0]
    C[0, 1, 2], d[0, 1] = 1.0, floors[0]
    C[1, 0, 1], d[1, 0] = 1.0, floors[1]
    return genbab.Spec(BOX[0].expand(2, -1).clone(), BOX[1].expand(2, -1).clone(), C, d)


def sampled_min(model: genbab.Model, row: torch.Tensor) -> float:
    xs = torch.rand(100_000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        return float((model.forward_flat(xs.float()).to(torch.float64) @ row).min())


def gap_floor(model: genbab.Model, row: torch.Tensor, share: float) -> float:
    """A floor ``share`` of the way from alpha-CROWN's bound of ``row . y`` to its sampled minimum."""
    lb, _ = compute_bounds(model, *BOX, "alpha-crown", row.reshape(1, -1))
    return float(lb) + share * (sampled_min(model, row) - float(lb))


@pytest.mark.parametrize("input_split", [0, 32], ids=["neuron-splits", "input-splits"])
def test_cases_of_one_box_are_proved_in_one_search(input_split: int) -> None:
    """Two true cases over the same box: one search (one report, both cases) proves both."""
    from genbab.api import run_bab

    model = toy()
    y1 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    spec = two_case_spec(model, (gap_floor(model, C_Y2[0], 0.5), gap_floor(model, y1, 0.5)))
    stats: dict = {}
    config = BabConfig(input_split_max_dims=input_split)
    remaining, witness = run_bab(model, spec, torch.tensor([0, 1]), time.monotonic() + 60, config, stats, None)
    assert witness is None and len(remaining) == 0
    assert [r["cases"] for r in stats["bab"]["cases"]] == [[0, 1]] and stats["bab"]["proved_cases"] == 2
    case_by_case: dict = {}
    remaining, _ = run_bab(model, spec, torch.tensor([0, 1]), time.monotonic() + 60,
                           BabConfig(input_split_max_dims=input_split, joint_cases=False), case_by_case, None)
    assert len(remaining) == 0 and [r["cases"] for r in case_by_case["bab"]["cases"]] == [[0], [1]]


@pytest.mark.parametrize("input_split", [0, 32], ids=["neuron-splits", "input-splits"])
def test_one_false_case_among_the_cases_of_a_box_is_never_proved(input_split: int) -> None:
    """Case 0 true, case 1 false: the joint search must end with a witness of case 1 that
    replays on onnxruntime (never unsat), or leave both cases open."""
    from genbab.api import run_bab

    model = toy()
    y1 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    floor1 = sampled_min(model, y1) + 0.01
    spec = two_case_spec(model, (gap_floor(model, C_Y2[0], 0.5), floor1))
    stats: dict = {}
    remaining, witness = run_bab(model, spec, torch.tensor([0, 1]), time.monotonic() + 20,
                                 BabConfig(input_split_max_dims=input_split), stats, None)
    assert sorted(remaining.tolist()) == [0, 1]
    assert witness is not None and witness.case == 1
    x = np.asarray(witness.x, dtype=np.float64)
    assert np.all(x >= -1.0) and np.all(x <= 1.0)
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    y = session.run(None, {model.input_name: x.reshape(model.onnx_input_shape).astype(model.np_dtype)})[0]
    assert float(np.asarray(y, dtype=np.float64).reshape(-1) @ y1.numpy()) < floor1


def test_input_split_search_runs_on_its_threads_and_restores_the_count() -> None:
    """``BabConfig.input_threads``: the input-split passes run on that many torch threads (seen
    from the progress callback, called between passes) and the caller's count comes back after."""
    model = toy()
    floor = gap_floor(model, C_Y2[0], 0.5)
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bab = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.tensor([floor], dtype=torch.float64),
                             BabConfig(input_threads=2), on_progress=lambda r: seen.append(torch.get_num_threads()))
        assert bab.input_mode and bab.run(time.monotonic() + 30).status == "unsat"
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_joint_search_without_an_attack_never_proves_a_false_case() -> None:
    """No attack to end it early: with case 1 false, the joint search may time out but must
    never answer ``unsat`` although case 0 alone is provable."""
    model = toy()
    y1 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    C = torch.stack([C_Y2[0], y1])
    d = torch.tensor([gap_floor(model, C_Y2[0], 0.5), sampled_min(model, y1) + 0.01], dtype=torch.float64)
    for dims in (0, 32):
        bab = BranchAndBound(engine_for(model), *BOX, C, d, BabConfig(input_split_max_dims=dims),
                             row_case=torch.tensor([0, 1]))
        assert bab.run(time.monotonic() + 5).status != "unsat"


def test_clipping_of_several_cases_keeps_the_hull_of_their_boxes() -> None:
    """Case 0 leaves ``x0 <= -0.5``, case 1 leaves ``x0 >= 0.5``: a counterexample may lie in
    either, so the clipped box is their hull, not their (empty) intersection."""
    model = toy()
    bab = BranchAndBound(engine_for(model), *BOX, torch.stack([C_Y2[0], C_Y2[0]]), torch.zeros(2, dtype=torch.float64),
                         BabConfig(), row_case=torch.tensor([0, 1]))
    lower, upper = -torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    A = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    rows = torch.tensor([[-0.5, -0.5]], dtype=torch.float64)
    (lo, hi), none = bab.clip(lower, upper, A, rows, rows)
    assert not bool(none[0])
    assert float(lo[0, 0]) <= -1.0 and float(hi[0, 0]) >= 1.0 - 1e-9  # the hull of [-1, -0.5] and [0.5, 1]
    one = BranchAndBound(engine_for(model), *BOX, C_Y2, torch.zeros(1, dtype=torch.float64), BabConfig())
    (lo1, hi1), _ = one.clip(lower, upper, A[:, :1], rows[:, :1], rows[:, :1])
    assert float(hi1[0, 0]) < -0.49  # one case alone: clipped to x0 <= -0.5


QUADRANTS = [((-1.0, -1.0), (0.0, 0.0)), ((0.0, -1.0), (1.0, 0.0)), ((-1.0, 0.0), (0.0, 1.0)), ((0.0, 0.0), (1.0, 1.0))]


def quadrant_spec(model: genbab.Model, false_quadrant: int | None = None) -> genbab.Spec:
    """Cases over the four quadrants of BOX: two per quadrant (``y2 <= a``, ``y1 <= b``, provable:
    halfway between alpha-CROWN's bound over BOX and the sampled minimum), one in quadrant 2
    (uneven groups); in ``false_quadrant`` the ``y1`` case's floor sits above that quadrant's
    sampled minimum (a false case)."""
    y1 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    floors = (gap_floor(model, C_Y2[0], 0.5), gap_floor(model, y1, 0.5))
    lowers, uppers, Cs, ds = [], [], [], []
    for q, (lo, hi) in enumerate(QUADRANTS):
        for k, row in enumerate((C_Y2[0], y1)):
            if q == 2 and k == 1:
                continue
            floor = floors[k]
            if q == false_quadrant and k == 1:
                xs = torch.tensor(lo) + torch.rand(50_000, 2, generator=torch.Generator().manual_seed(3),
                                                  dtype=torch.float64) * (torch.tensor(hi) - torch.tensor(lo))
                with torch.no_grad():
                    floor = float((model.forward_flat(xs.float()).double() @ row).min()) + 0.01
            lowers.append(torch.tensor(lo, dtype=torch.float64))
            uppers.append(torch.tensor(hi, dtype=torch.float64))
            Cs.append(torch.stack([row, torch.zeros(3, dtype=torch.float64)]))
            ds.append(torch.tensor([floor, 1.0], dtype=torch.float64))
    return genbab.Spec(torch.stack(lowers), torch.stack(uppers), torch.stack(Cs), torch.stack(ds))


def quadrant_groups(spec: genbab.Spec):
    """The four quadrant boxes' rows as BranchAndBound groups: ``(first case of each box, C [4, K S,
    3], d [4, K S], K, S)``, the one-case box padded with a row no point satisfies (``0 y <= -1``)."""
    groups = [[0, 1], [2, 3], [4], [5, 6]]
    K, S = 2, spec.C.shape[1]
    C = torch.zeros(4, K * S, 3, dtype=torch.float64)
    d = -torch.ones(4, K * S, dtype=torch.float64)
    for g, cases in enumerate(groups):
        for k, case in enumerate(cases):
            C[g, k * S:(k + 1) * S], d[g, k * S:(k + 1) * S] = spec.C[case], spec.d[case]
    return torch.tensor([g[0] for g in groups]), C, d, K, S


def test_cases_of_several_boxes_are_proved_in_one_search() -> None:
    """Seven true cases over four boxes: one search (one report over 4 boxes) proves all; per box
    (``shared_frontier=False``), four searches do."""
    from genbab.api import run_bab

    model = toy()
    spec = quadrant_spec(model)
    stats: dict = {}
    remaining, witness = run_bab(model, spec, torch.arange(7), time.monotonic() + 60, BabConfig(), stats, None)
    assert witness is None and len(remaining) == 0
    assert stats["bab"]["shared_frontier"] and stats["bab"]["cases"][0]["boxes"] == 4
    assert stats["bab"]["proved_cases"] == 7
    per_box: dict = {}
    remaining, _ = run_bab(model, spec, torch.arange(7), time.monotonic() + 60, BabConfig(shared_frontier=False),
                           per_box, None)
    assert len(remaining) == 0 and len(per_box["bab"]["cases"]) == 4
    result = genbab.verify(model, spec, timeout=60)
    assert result.status == "unsat" and "skipped" in result.stats["bounds"]


def test_a_false_case_in_one_of_several_boxes_is_never_proved() -> None:
    """Quadrant 1's ``y1`` case is false: without an attack the shared search never answers
    ``unsat`` and leaves that box open; with the domain attack it ends with a witness of that
    case that replays on onnxruntime inside quadrant 1."""
    from genbab.api import run_bab

    model = toy()
    spec = quadrant_spec(model, false_quadrant=1)
    engine = engine_for(model)
    first, C, d, K, S = quadrant_groups(spec)
    bab = BranchAndBound(engine, spec.lower[first], spec.upper[first], C, d, BabConfig(),
                         row_case=torch.arange(K).repeat_interleave(S))
    assert bab.run(time.monotonic() + 5).status != "unsat"
    assert 1 in bab.open_groups()
    stats: dict = {}
    remaining, witness = run_bab(model, spec, torch.arange(7), time.monotonic() + 30, BabConfig(), stats, None)
    assert witness is not None and witness.case == 3 and 3 in remaining.tolist()
    x = np.asarray(witness.x, dtype=np.float64)
    assert np.all(x >= np.array(QUADRANTS[1][0])) and np.all(x <= np.array(QUADRANTS[1][1]))
    session = ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])
    y = session.run(None, {model.input_name: x.reshape(model.onnx_input_shape).astype(model.np_dtype)})[0]
    assert float(np.asarray(y, dtype=np.float64).reshape(-1)[1]) < float(spec.d[3, 0])


def test_parents_in_flight_at_a_timeout_stay_open() -> None:
    """A deadline that passes while children are bounded (BoundsTimeout) leaves their parents
    open: the search over several boxes must not lose a box, or its cases would count as proved."""
    from genbab.bounds.engine import BoundsTimeout

    model = toy()
    spec = quadrant_spec(model, false_quadrant=1)
    first, C, d, K, S = quadrant_groups(spec)
    bab = BranchAndBound(engine_for(model), spec.lower[first], spec.upper[first], C, d, BabConfig(),
                         row_case=torch.arange(K).repeat_interleave(S))
    original, calls = bab.bound, []

    def bound(domains, deadline):
        calls.append(len(domains))
        if len(calls) == 2:  # the first children's pass runs out of time
            raise BoundsTimeout("deadline passed")
        return original(domains, deadline)

    bab.bound = bound
    result = bab.run(time.monotonic() + 30)
    assert result.status == "timeout" and len(calls) == 2
    assert 1 in bab.open_groups() and result.open >= 1
