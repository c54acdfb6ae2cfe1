"""The Python entry point: ``genbab.verify(model, spec, timeout=...)``.

Order of work: load (paths or already loaded objects), check that the property's variables
match the model (a property that leaves an input unbounded gets the attack alone: ``sat`` or
``unknown``), falsify briefly (sampling + PGD, every candidate replayed on onnxruntime),
bound every case with alpha-CROWN (``unsat`` when all are proved), branch and bound on the rest
(its worst domains attacked along the way), then falsify the open cases
until the deadline (``sat`` or ``timeout``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from genbab.attack.pgd import AttackConfig, Attacker, AttackStats
from genbab.attack.witness import Replayer, Witness
from genbab.bab.loop import BabConfig
from genbab.bounds.alpha import AlphaConfig
from genbab.errors import ModelError, SpecError, UnsupportedOpError
from genbab.model.graph import ConstantOutputError
from genbab.model.loading import load_model
from genbab.model.model import Model
from genbab.prove import prove_cases
from genbab.result import Result
from genbab.spec import Spec, load_spec

@dataclass(frozen=True)
class BabProgress:
    """What branch and bound reports after each batch (phase ``"bab"``)."""

    case: int
    visited: int  # domains bounded so far
    open: int  # domains still open
    worst_bound: float  # lowest lower bound among the open domains (> 0 proves the case)
    max_depth: int


ProgressCallback = Callable[[str, "AttackStats | BabProgress", float], None]


def verify(model: Model | str | Path, spec: Spec | str | Path, timeout: float = 300.0, *, seed: int = 0,
           device: str | torch.device = "auto", kernels: str = "auto", precision: str = "auto",
           attack: AttackConfig = AttackConfig(),
           bounds: bool = True, bab: bool = True, alpha: AlphaConfig = AlphaConfig(),
           bab_config: BabConfig = BabConfig(), progress: ProgressCallback | None = None) -> Result:
    """Decide whether ``model`` violates ``spec`` within ``timeout`` seconds (loading included).

    Phases: a short attack; alpha-CROWN on every case (``bounds=False`` skips it); branch and
    bound on the cases left (``bab=False`` skips it), keeping a tenth of the remaining time;
    then the attack again on the cases still open, until a witness or the deadline.

    ``device`` (``auto``: CUDA when available, ``cpu``, ``cuda``) holds the model, the attacks,
    the bound engine and the branch-and-bound domains; ``kernels`` (``auto``: Triton on CUDA,
    ``triton``, ``torch``) picks the bound kernels (:class:`~genbab.bounds.config.EngineConfig`);
    ``precision`` (``auto``: float64, ``float32``, ``float64``) the bound arithmetic, sound in both.
    Impossible choices raise :class:`~genbab.errors.GenbabError` before any work.
    """
    from genbab.bounds import rounding
    from genbab.bounds.config import EngineConfig, resolve_precision

    dtype = resolve_precision(precision)
    engine_config = EngineConfig.resolve(device, kernels, dtype)
    device = engine_config.device
    start = time.monotonic()
    deadline = start + timeout
    try:
        model = load_model(model) if isinstance(model, (str, Path)) else model
    except ConstantOutputError as err:  # the output ignores the input: decided on its constant value
        from genbab.constant_output import decide

        return decide(err, load_spec(spec) if isinstance(spec, (str, Path)) else spec, start)
    except (UnsupportedOpError, ModelError) as err:  # untranslatable: the attack alone, on onnxruntime
        from genbab.attack.untranslated import attack_untranslated

        if not isinstance(model, (str, Path)):
            raise
        fallback = attack_untranslated(model, load_spec(spec) if isinstance(spec, (str, Path)) else spec, err,
                                       start, deadline, seed)
        if fallback is None:
            raise
        return fallback
    spec = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    check_dimensions(model, spec)
    stats: dict = {"load_s": round(time.monotonic() - start, 4), "n_cases": spec.n_cases,
                   "n_inputs": spec.n_inputs, "n_outputs": spec.n_outputs, "precision": str(dtype).split(".")[-1]}
    if dtype != torch.float64 and not rounding.exact_in(spec.C, dtype):  # the objective would change: float64
        engine_config = EngineConfig.resolve(device, kernels, torch.float64)
        stats["precision"] = "float64 (the property's coefficients are not exact in float32)"
    if spec.n_cases == 0:
        return Result("unsat", None, time.monotonic() - start, {**stats, "reason": "the unsafe input set is empty"})
    torch.manual_seed(seed)
    model.to(device)
    replayer = Replayer(model, spec)
    report = None if progress is None else (lambda s: progress("attack", s, deadline - time.monotonic()))
    if bool(spec.unbounded().any()):  # no bound is sound on an infinite range: the attack alone
        stats["reason"] = f"input {unbounded_name(model, spec)} is unbounded: only an attack was run"
        witness = attack_unbounded(model, spec, replayer, deadline, attack, seed, device, stats, report)
        return Result("sat" if witness is not None else "unknown", witness, time.monotonic() - start, stats)
    first = Attacker(model, spec, replayer, attack, seed=seed, device=device)
    witness = first.run(min(deadline, time.monotonic() + first_attack_budget(timeout)), report, stall_rounds=5)
    stats["attack"] = attack_stats(first)
    if witness is not None:
        return Result("sat", witness, time.monotonic() - start, stats)
    open_cases = torch.arange(spec.n_cases)
    if bounds and not translation_agrees(model, spec, seed, stats, engine_config):
        bounds = False  # no proof about a graph that is not the model; the attack goes on
    if bounds:
        # input splitting bounds sub-boxes by the thousand: its time beats tightening the root's bounds
        splits_inputs = bab and free_inputs(spec) <= bab_config.input_split_max_dims
        if bab and shared_frontier(spec, bab_config):  # many boxes: their roots are the search's first pass
            open_cases, root_bounds = torch.arange(spec.n_cases), None
            stats["bounds"] = {"skipped": f"{box_count(spec)} input boxes, split by their inputs: one branch and "
                                          "bound over all of them bounds the boxes in its first pass"}
        else:
            open_cases, root_bounds = run_bounds(model, spec, deadline, alpha, stats, progress, engine_config,
                                                 tighten=not (splits_inputs and bab_config.input_skip_tightening),
                                                 unstable_only=bab_config.tighten_unstable_only)
        if len(open_cases) and bab and "error" not in stats["bounds"]:
            reserve = max(1.0, 0.1 * (deadline - time.monotonic()))
            open_cases, witness = run_bab(model, spec, open_cases, deadline - reserve, bab_config, stats, progress,
                                          root_bounds, attack, engine_config)
            if witness is not None:
                return Result("sat", witness, time.monotonic() - start, stats)
        if len(open_cases) == 0:
            return Result("unsat", None, time.monotonic() - start, stats)
    rest = spec.subset(open_cases)
    later = Attacker(model, rest, Replayer(model, rest), attack, seed=seed + 1, device=device)
    witness = later.run(deadline, report)
    stats["attack_after_bounds"] = attack_stats(later)
    if witness is not None:
        witness = replace(witness, case=int(open_cases[witness.case]))
    undecidable = "no_proof_reason" in stats  # an op without a bound rule, or a translation that disagrees
    return Result("sat" if witness is not None else "unknown" if undecidable else "timeout", witness,
                  time.monotonic() - start, stats)


DOMAIN_ATTACK_STEPS = 10  # PGD steps from each bound minimiser of a worst domain
UNBOUNDED_WIDTHS = (1.0, 10.0, 100.0, 1e3, 1e4)  # half-widths of the ranges drawn for unbounded inputs


def attack_unbounded(model: Model, spec: Spec, replayer: Replayer, deadline: float, attack: AttackConfig,
                     seed: int, device, stats: dict, report) -> Witness | None:
    """The attack on a property whose boxes leave some input unbounded: on :meth:`Spec.finite`
    boxes (such an input within ``w`` of 0, or of its one finite bound) for ``w`` in
    :data:`UNBOUNDED_WIDTHS`, each width until the attack stalls or its equal share of the time
    left; every candidate is replayed against the exact (unbounded) property."""
    runs = []
    witness = None
    for k, width in enumerate(UNBOUNDED_WIDTHS):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        attacker = Attacker(model, spec.finite(width), replayer, attack, seed=seed + k, device=device)
        witness = attacker.run(time.monotonic() + left / (len(UNBOUNDED_WIDTHS) - k), report, stall_rounds=5)
        runs.append({"half_width": width, **attack_stats(attacker)})
        if witness is not None:
            break
    stats["attack_unbounded"] = runs
    return witness


def unbounded_name(model: Model, spec: Spec) -> str:
    """``X_i (model input [a,b,...])`` for the first input element without a lower or upper bound."""
    i = int(torch.nonzero(spec.unbounded().any(dim=0)).flatten()[0])
    index = [int(v) for v in torch.unravel_index(torch.tensor(i), tuple(model.onnx_input_shape))]
    return f"X_{i} (model input [{','.join(map(str, index))}])"


def translation_agrees(model: Model, spec: Spec, seed: int, stats: dict, engine_config=None) -> bool:
    """Run :func:`~genbab.translation_check.check_translation` on the bound engine's graph and
    record it under ``stats["translation_check"]``; False means no proof may be reported."""
    from genbab.bounds import engine_for
    from genbab.translation_check import check_translation

    try:
        graph = engine_for(model, engine_config).graph
    except UnsupportedOpError as err:  # no bounds at all: run_bounds reports it
        stats["translation_check"] = {"ok": None, "reason": f"not checked: {err}"}
        return True
    try:
        report = check_translation(model, graph, spec.lower, spec.upper, seed)
    except Exception as err:  # onnxruntime or the graph cannot run a sample: trust neither
        stats["translation_check"] = {"ok": False, "points": 0, "worst": None,
                                      "reason": f"the check could not run ({type(err).__name__}: {err})"}
        return False
    stats["translation_check"] = report.to_json()
    if not report.ok:
        stats["no_proof_reason"] = "the translated graph disagrees with onnxruntime: " + report.reason
    return report.ok


def free_inputs(spec: Spec) -> int:
    """The most input coordinates of positive width in any case's box (what input splits shrink)."""
    return int((spec.upper > spec.lower).sum(dim=1).max()) if spec.n_cases else 0


def first_attack_budget(timeout: float) -> float:
    """At most this many seconds of attack before bounding (it also stops once it stalls): most
    counterexamples fall in the first seconds; the rest get the time left after bounding."""
    return max(0.5, min(0.02 * timeout, 2.0))


def run_bounds(model: Model, spec: Spec, deadline: float, alpha: AlphaConfig, stats: dict,
               progress: ProgressCallback | None, engine_config=None,
               tighten: bool = True, unstable_only: bool = False) -> tuple[torch.Tensor, list | None]:
    """alpha-CROWN on every case; returns the indices of the cases it did not prove and, per case,
    the intermediate bounds of its box (branch and bound starts from them). ``tighten``: the
    rounds of intermediate-bound tightening (:func:`~genbab.prove.prove_cases`; ``unstable_only``:
    rows only for the neurons that shape a relaxation)."""
    if progress is not None:
        progress("bounds", AttackStats(), deadline - time.monotonic())
    try:
        from genbab.bounds import engine_for

        report = prove_cases(model, spec, deadline, alpha, tighten=tighten, engine=engine_for(model, engine_config),
                             unstable_only=unstable_only)
    except UnsupportedOpError as err:
        stats["bounds"] = {"error": str(err)}
        stats["no_proof_reason"] = str(err)  # no bound can ever hold: the verdict is sat or unknown
        return torch.arange(spec.n_cases), None
    except (RuntimeError, ValueError) as err:  # a bound step failed: no proof, keep attacking
        stats["bounds"] = {"error": f"{type(err).__name__}: {err}"}
        return torch.arange(spec.n_cases), None
    finite = report.case_bounds[torch.isfinite(report.case_bounds)]
    stats["bounds"] = {"seconds": round(report.seconds, 3), "boxes": report.boxes,
                       "proved_cases": int(report.proved.sum()),
                       "worst_case_bound": float(finite.min()) if len(finite) else None}
    return torch.nonzero(~report.proved).flatten(), report.root_bounds


def case_groups(spec: Spec, cases: list[int]) -> list[list[int]]:
    """The ``cases`` grouped by identical input box (:func:`~genbab.prove.group_by_box`), groups
    and cases in their first order."""
    from genbab.prove import group_by_box

    box_of = group_by_box(spec)[1].tolist()
    groups: dict[int, list[int]] = {}
    for case in cases:
        groups.setdefault(box_of[case], []).append(case)
    return list(groups.values())


def run_bab(model: Model, spec: Spec, open_cases: torch.Tensor, deadline: float, config: BabConfig, stats: dict,
            progress: ProgressCallback | None, root_bounds: list | None = None,
            attack: AttackConfig = AttackConfig(), engine_config=None) -> tuple[torch.Tensor, Witness | None]:
    """Branch and bound on the open cases, one search per input box (the cases of one box are
    bounded together, ``BabConfig.joint_cases``; else one search per case), box after box;
    returns the cases still open (it stops at the first box it cannot prove: the property can
    then no longer be proved) and the witness a domain attack confirmed, if any."""
    from genbab.bab.loop import BranchAndBound
    from genbab.bounds import engine_for

    reports, witness, started = [], None, time.monotonic()
    cases = open_cases.tolist()
    groups = case_groups(spec, cases) if config.joint_cases else [[c] for c in cases]
    engine = engine_for(model, engine_config)
    attacker = Attacker(model, spec, Replayer(model, spec), attack, device=engine.device)
    S = spec.C.shape[1]
    if len(groups) > 1 and shared_frontier(spec, config):
        return run_bab_boxes(engine, spec, groups, deadline, config, stats, progress, attacker, started)
    while groups and time.monotonic() < deadline:
        group = groups[0]
        first = group[0]
        row_to_case = torch.tensor(group, dtype=torch.int64).repeat_interleave(S)

        def domain_attack(x, rows, lo, hi, until, row_to_case=row_to_case):
            return attacker.descend(x, row_to_case.to(x.device)[rows.to("cpu")].to(x.device), lo, hi, until,
                                    DOMAIN_ATTACK_STEPS)

        def on_progress(result, case=first):
            if progress is not None:
                _, worst, n_open = result.history[-1]
                progress("bab", BabProgress(case, result.visited, n_open, worst, result.max_depth),
                         deadline - time.monotonic())

        try:
            result = BranchAndBound(engine, spec.lower[first], spec.upper[first],
                                    spec.C[group].reshape(len(group) * S, -1), spec.d[group].reshape(-1),
                                    config, root_bounds[first] if root_bounds else None,
                                    domain_attack, on_progress,
                                    row_case=torch.arange(len(group)).repeat_interleave(S)).run(deadline)
        except (RuntimeError, ValueError) as err:  # no proof from this box; the attack goes on
            reports.append({"case": first, "cases": group, "status": "error", "error": f"{type(err).__name__}: {err}"})
            break
        reports.append({"case": first, "cases": group, "status": result.status, "visited": result.visited,
                        "open": result.open, "max_depth": result.max_depth, "batch": result.batch,
                        "history": result.history[-25:]})
        if result.status == "sat":
            witness = result.witness
        if result.status != "unsat":
            break
        groups.pop(0)
    remaining = [c for g in groups for c in g]
    stats["bab"] = {"cases": reports, "proved_cases": sum(len(r["cases"]) for r in reports if r["status"] == "unsat"),
                    "time_s": round(time.monotonic() - started, 3), "visited": sum(r.get("visited", 0) for r in reports),
                    "domain_attack": {"steps": attacker.stats.steps, "replays": attacker.replayer.replays}}
    return torch.tensor(remaining, dtype=torch.int64), witness


def shared_frontier(spec: Spec, config: BabConfig) -> bool:
    """Several input boxes, each split by its inputs: one branch-and-bound search over them all
    (``BabConfig.shared_frontier``; the cases of each box bounded jointly)."""
    return (config.shared_frontier and config.joint_cases and free_inputs(spec) <= config.input_split_max_dims
            and int(box_count(spec)) > 1)


def box_count(spec: Spec) -> int:
    from genbab.prove import group_by_box

    return int(group_by_box(spec)[1].max()) + 1 if spec.n_cases else 0


def run_bab_boxes(engine, spec: Spec, groups: list[list[int]], deadline: float, config: BabConfig, stats: dict,
                  progress: ProgressCallback | None, attacker: Attacker, started: float
                  ) -> tuple[torch.Tensor, Witness | None]:
    """One search over every box's open cases (:class:`~genbab.bab.loop.BranchAndBound` with
    groups): each group is a box with its cases' rows, padded to the same case count with
    cases no point is in (rows ``0 . y <= -1``, proved by any bound). Returns the cases of the
    boxes left open and the witness a domain attack confirmed, if any."""
    from genbab.bab.loop import BranchAndBound

    S, K = spec.C.shape[1], max(len(g) for g in groups)
    G = len(groups)
    padded = [g + [-1] * (K - len(g)) for g in groups]
    index = torch.tensor(padded, dtype=torch.int64)  # [G, K]
    real = (index >= 0).unsqueeze(-1)  # [G, K, 1]
    C = torch.where(real.unsqueeze(-1), spec.C[index.clamp(min=0)], 0.0).reshape(G, K * S, -1)
    d = torch.where(real, spec.d[index.clamp(min=0)], -1.0).reshape(G, K * S)
    first = torch.tensor([g[0] for g in groups])
    row_to_case = torch.where(index >= 0, index, first.unsqueeze(1)).repeat_interleave(S, dim=1).reshape(-1)

    def domain_attack(x, rows, lo, hi, until):
        return attacker.descend(x, row_to_case.to(x.device)[rows.to("cpu")].to(x.device), lo, hi, until,
                                DOMAIN_ATTACK_STEPS)

    def on_progress(result):
        if progress is not None:
            _, worst, n_open = result.history[-1]
            progress("bab", BabProgress(groups[0][0], result.visited, n_open, worst, result.max_depth),
                     deadline - time.monotonic())

    witness, remaining = None, [c for g in groups for c in g]
    try:
        bab = BranchAndBound(engine, spec.lower[first], spec.upper[first], C, d, config, None, domain_attack,
                             on_progress, row_case=torch.arange(K).repeat_interleave(S))
        result = bab.run(deadline)
        report = {"boxes": G, "cases": remaining, "status": result.status, "visited": result.visited,
                  "open": result.open, "max_depth": result.max_depth, "batch": result.batch,
                  "history": result.history[-25:]}
        if result.status == "sat":
            witness = result.witness
        elif result.status == "unsat":
            remaining = []
        elif bab.open_groups():
            remaining = [c for g in bab.open_groups() for c in groups[g]]
        # else: open without a known box (cannot happen: BranchAndBound keeps in-flight parents), all stay open
        report["open_boxes"] = len(bab.open_groups()) if result.status != "unsat" else 0
    except (RuntimeError, ValueError) as err:  # no proof from the search; the attack goes on
        report = {"boxes": G, "cases": remaining, "status": "error", "error": f"{type(err).__name__}: {err}"}
    stats["bab"] = {"cases": [report], "shared_frontier": True,
                    "proved_cases": spec.n_cases - len(remaining) if report["status"] != "error" else 0,
                    "time_s": round(time.monotonic() - started, 3), "visited": report.get("visited", 0),
                    "domain_attack": {"steps": attacker.stats.steps, "replays": attacker.replayer.replays}}
    return torch.tensor(remaining, dtype=torch.int64), witness


def attack_stats(attacker: Attacker) -> dict:
    stats = {k: v for k, v in asdict(attacker.stats).items() if k != "history"}
    stats["best_margin_history"] = [[round(t, 3), m] for t, m in attacker.stats.history[-20:]]
    return stats


def check_dimensions(model: Model, spec: Spec) -> None:
    """The property's X/Y variables must match the model's flattened input/output sizes."""
    if spec.n_inputs != model.n_inputs:
        raise SpecError(f"property declares {spec.n_inputs} inputs but the model has {model.n_inputs} "
                        f"(input shape {list(model.onnx_input_shape)})")
    if spec.n_outputs != model.n_outputs:
        raise SpecError(f"property declares {spec.n_outputs} outputs but the model has {model.n_outputs} "
                        f"(output shape {list(model.output_shape)})")
