"""The Python entry point: ``genbab.verify(model, spec, timeout=...)``.

Order of work: load (paths or already loaded objects), check that the property's variables
match the model, falsify (sampling + PGD, every candidate replayed on onnxruntime) until the
deadline. Without bound propagation nothing can be proved, so the only verdicts are ``sat``
and ``timeout`` (and ``unsat`` for a property whose unsafe input set is empty).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from genbab.attack.pgd import AttackConfig, Attacker, AttackStats
from genbab.attack.witness import Replayer
from genbab.errors import SpecError
from genbab.model.loading import load_model
from genbab.model.model import Model
from genbab.result import Result
from genbab.spec import Spec, load_spec

ProgressCallback = Callable[[str, AttackStats, float], None]


def verify(model: Model | str | Path, spec: Spec | str | Path, timeout: float = 300.0, *, seed: int = 0,
           device: str = "cpu", attack: AttackConfig = AttackConfig(),
           progress: ProgressCallback | None = None) -> Result:
    """Decide whether ``model`` violates ``spec`` within ``timeout`` seconds (loading included)."""
    start = time.monotonic()
    deadline = start + timeout
    timings: dict[str, float] = {}
    model = load_model(model) if isinstance(model, (str, Path)) else model
    timings["load_model_s"] = time.monotonic() - start
    spec = load_spec(spec) if isinstance(spec, (str, Path)) else spec
    timings["load_spec_s"] = time.monotonic() - start - timings["load_model_s"]
    check_dimensions(model, spec)
    if spec.n_cases == 0:
        return Result("unsat", None, time.monotonic() - start, {"reason": "the unsafe input set is empty", **timings})
    torch.manual_seed(seed)
    model.to(device)
    attacker = Attacker(model, spec, Replayer(model, spec), attack, seed=seed, device=device)
    report = None if progress is None else (lambda s: progress("attack", s, deadline - time.monotonic()))
    witness = attacker.run(deadline, report)
    timings["attack_s"] = time.monotonic() - start - timings["load_model_s"] - timings["load_spec_s"]
    stats = {**timings, "attack": {k: v for k, v in asdict(attacker.stats).items() if k != "history"},
             "n_cases": spec.n_cases, "n_inputs": spec.n_inputs, "n_outputs": spec.n_outputs}
    stats["attack"]["best_margin_history"] = [[round(t, 3), m] for t, m in attacker.stats.history[-50:]]
    status = "sat" if witness is not None else "timeout"
    return Result(status, witness, time.monotonic() - start, stats)


def check_dimensions(model: Model, spec: Spec) -> None:
    """The property's X/Y variables must match the model's flattened input/output sizes."""
    if spec.n_inputs != model.n_inputs:
        raise SpecError(f"property declares {spec.n_inputs} inputs but the model has {model.n_inputs} "
                        f"(input shape {list(model.onnx_input_shape)})")
    if spec.n_outputs != model.n_outputs:
        raise SpecError(f"property declares {spec.n_outputs} outputs but the model has {model.n_outputs} "
                        f"(output shape {list(model.output_shape)})")
