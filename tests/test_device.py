"""One device for everything: the engine, its constants, the BaB domains, alpha/beta parameters.

- ``device="cpu"``: ``compute_bounds`` and ``verify`` on the toy model and a shared sigmoid
  MNIST network (skipped when ``../shared/benchmarks`` is absent), results on the caller's device;
- after a few branch-and-bound passes every tensor of the domain store and every alpha/beta
  parameter is on ``engine.device`` in ``engine.dtype`` (float32 and float64 engines, so a
  tensor created without the engine's dtype shows up even on a CPU-only machine);
- the device option's rules (``auto``, a missing CUDA device, the CLI's one-line exit 2);
- on CUDA (skipped, with the reason, without a CUDA device): the same checks on ``cuda``, bounds
  equal to the CPU ones to 1e-6 and the same verdicts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

import genbab
from genbab.bab.loop import BabConfig, BranchAndBound
from genbab.bounds import engine_for
from genbab.bounds.alpha import AlphaParams
from genbab.bounds.config import EngineConfig, resolve_device
from genbab.errors import GenbabError

REPO = Path(__file__).resolve().parents[1]
TOY, ROBUST, UNSAFE = REPO / "specs" / "toy_mlp.onnx", REPO / "specs" / "toy_mlp_robust.vnnlib", \
    REPO / "specs" / "toy_mlp_unsafe.vnnlib"
SHARED = Path(os.environ.get("GENBAB_BENCHMARKS") or REPO.parent / "shared" / "benchmarks")
SIGMOID_NET = SHARED / "eran_sigmoid" / "onnx" / "ffnnSIGMOID__Point_6x200.onnx.gz"
def needs_cuda(test):
    """Runs where a CUDA device is present; elsewhere a visible skip that CI accepts (optional)."""
    return pytest.mark.optional(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))
needs_shared = pytest.mark.skipif(not SIGMOID_NET.exists(), reason=f"{SIGMOID_NET} is absent")
F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sigmoid_case():
    """The shared 6x200 sigmoid network and its first property (a small L-inf box)."""
    folder = SIGMOID_NET.parent.parent
    first = (folder / "instances.csv").read_text().splitlines()[0].split(",")
    return genbab.load_model(SIGMOID_NET), genbab.load_spec(folder / first[1].strip())


# ----------------------------------------------------------------------------- the option


def test_device_option_rules():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert EngineConfig.resolve("cpu", "auto") == EngineConfig(torch.device("cpu"), F64, "torch")
    with pytest.raises(GenbabError, match="one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(GenbabError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(GenbabError, match="no CUDA device"):
            genbab.verify(TOY, ROBUST, timeout=5, device="cuda")


@pytest.mark.optional
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_cli_device_cuda_without_cuda_is_one_line_exit_2():
    from click.testing import CliRunner

    from genbab.cli import main
    out = CliRunner().invoke(main, ["verify", str(TOY), str(ROBUST), "--device", "cuda", "--quiet"])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA device" in lines[0], out.output


def test_engines_are_cached_per_config():
    model = genbab.load_model(TOY)
    a = engine_for(model, EngineConfig())
    assert engine_for(model) is a and engine_for(model, EngineConfig(torch.device("cpu"))) is a
    b = engine_for(model, EngineConfig(torch.device("cpu"), torch.float32))
    assert b is not a and b.dtype == torch.float32 and b.config.dtype == torch.float32


# ----------------------------------------------------------------------------- cpu


def test_compute_bounds_and_verify_on_the_cpu():
    model, spec = genbab.load_model(TOY), genbab.load_spec(ROBUST)
    lb, ub = genbab.compute_bounds(model, spec.lower[0], spec.upper[0], "crown", device="cpu")
    assert lb.device.type == "cpu" and lb.shape == (1, 3) and bool((lb <= ub).all())
    xs = spec.lower[0] + torch.rand(2000, 2, dtype=F64) * (spec.upper[0] - spec.lower[0])
    ys = model.forward_flat(xs.to(model.dtype)).double().detach()
    assert bool((ys >= lb - 1e-6).all() and (ys <= ub + 1e-6).all())
    assert genbab.verify(TOY, ROBUST, timeout=60, device="cpu").status == "unsat"
    assert genbab.verify(TOY, UNSAFE, timeout=60, device="cpu").status == "sat"


@needs_shared
def test_compute_bounds_on_a_shared_sigmoid_network_on_the_cpu():
    model, spec = sigmoid_case()
    lb, ub = genbab.compute_bounds(model, spec.lower[:1], spec.upper[:1], "crown", device="cpu")
    assert lb.device.type == "cpu" and lb.shape == (1, 10) and bool(torch.isfinite(lb).all())
    mid = ((spec.lower[:1] + spec.upper[:1]) / 2).to(model.dtype)
    y = model.forward_flat(mid).double().detach()
    assert bool((y >= lb - 1e-5).all() and (y <= ub + 1e-5).all())


def run_passes(config: EngineConfig, floor: float = 0.95, seconds: float = 60.0):
    """Branch and bound on the toy case with the unsafe threshold raised by ``floor`` (the root
    bound 0.685 does not prove it, splitting does): the finished loop and its engine."""
    model, spec = genbab.load_model(TOY), genbab.load_spec(ROBUST)
    engine = engine_for(model, config)
    bab = BranchAndBound(engine, spec.lower[0], spec.upper[0], spec.C[0], spec.d[0] + floor,
                         BabConfig(alpha_iterations=2, input_batch_size=8, max_domains=10_000))
    return bab, bab.run(time.monotonic() + seconds), engine


def activation_passes(config: EngineConfig, seconds: float = 30.0):
    """Activation splitting (no input splits) on the toy case for a few passes, stopped by a
    domain limit: the domain store then holds split bounds and alpha/beta warm starts."""
    model, spec = genbab.load_model(TOY), genbab.load_spec(ROBUST)
    engine = engine_for(model, config)
    bab = BranchAndBound(engine, spec.lower[0], spec.upper[0], spec.C[0], spec.d[0] + 1.0,
                         BabConfig(alpha_iterations=2, input_split_max_dims=0, batch_size=8, max_domains=24))
    return bab, bab.run(time.monotonic() + seconds), engine


def assert_on_engine(bab: BranchAndBound, engine, what: str) -> int:
    """Every tensor of ``bab.open_domains`` on the engine's device, split bounds and warm-start
    parameters in its dtype (``lb`` and split points are float64 by design); returns how many."""
    store = bab.open_domains
    tensors = {f"lower/{k}": v for k, v in store.lower.items()}
    tensors.update({f"upper/{k}": v for k, v in store.upper.items()})
    tensors.update({f"params/{k}": v for k, v in store.params.items()})
    for k, v in tensors.items():
        assert v.device == engine.device and v.dtype == engine.dtype, (what, k, v.device, v.dtype)
    for k in ("lb", "depth", "split_node", "split_index", "split_point"):
        assert getattr(store, k).device == engine.device, (what, k)
    assert store.lb.dtype == store.split_point.dtype == F64
    return len(tensors)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_domains_and_parameters_live_on_the_engine_device(dtype):
    config = EngineConfig(torch.device("cpu"), dtype, "torch")
    bab, result, engine = activation_passes(config)
    assert result.visited > 1 and len(bab.open_domains) > 0, result
    assert assert_on_engine(bab, engine, "activation splits") > 0
    assert any(k.startswith("alpha/") for k in bab.open_domains.params), "no alpha warm starts stored"
    assert any(k.startswith("beta/") for k in bab.open_domains.params), "no beta warm starts stored"
    # alpha parameters built from the root bounds
    alpha = AlphaParams(engine, bab.root_bounds, n_rows=1)
    assert alpha.tensors()
    for t in alpha.tensors():
        assert t.device == engine.device and t.dtype == engine.dtype
    bab, result, engine = run_passes(config)
    assert result.status == "unsat" and result.visited > 1  # input splits, proved


# ----------------------------------------------------------------------------- cuda


@needs_cuda
def test_cuda_bounds_equal_cpu_bounds():
    model, spec = genbab.load_model(TOY), genbab.load_spec(ROBUST)
    for method in ("ibp", "crown", "alpha-crown"):
        cpu = genbab.compute_bounds(model, spec.lower[0], spec.upper[0], method, device="cpu", kernels="torch")
        for kernels in ("torch", "triton"):
            gpu = genbab.compute_bounds(model, spec.lower[0], spec.upper[0], method, device="cuda", kernels=kernels)
            for a, b in zip(cpu, gpu):
                assert b.device.type == "cpu"  # returned on the caller's device
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@needs_cuda
@needs_shared
def test_cuda_bounds_equal_cpu_bounds_on_a_shared_sigmoid_network():
    model, spec = sigmoid_case()
    cpu = genbab.compute_bounds(model, spec.lower[:1], spec.upper[:1], "crown", device="cpu")
    for kernels in ("torch", "triton"):
        gpu = genbab.compute_bounds(model, spec.lower[:1].cuda(), spec.upper[:1].cuda(), "crown",
                                    device="cuda", kernels=kernels)
        assert gpu[0].device.type == "cuda"
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(a, b.cpu(), rtol=1e-6, atol=1e-6)


@needs_cuda
def test_cuda_verify_verdicts_equal_cpu_verdicts():
    for spec in (ROBUST, UNSAFE):
        cpu = genbab.verify(TOY, spec, timeout=60, device="cpu").status
        for kernels in ("torch", "triton"):
            assert genbab.verify(TOY, spec, timeout=60, device="cuda", kernels=kernels).status == cpu


@needs_cuda
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_cuda_domains_and_parameters_live_on_the_gpu(kernels):
    config = EngineConfig.resolve("cuda", kernels)
    assert config.device.type == "cuda"
    bab, result, engine = activation_passes(config)
    assert result.visited > 1 and assert_on_engine(bab, engine, "cuda") > 0
    bab, result, engine = run_passes(config)
    assert result.status == "unsat"
