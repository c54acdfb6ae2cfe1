"""Intermediate bounds of GAN-style convolutional networks with smooth activations.

Builds (torch, fixed seed) and exports to ONNX two models on 32x32x3 images:

- ``generator``: latent ``z`` (``--latent`` dims) -> Linear -> reshape ``[64, 4, 4]`` ->
  (Upsample x2 -> Conv 3x3 -> BatchNorm -> tanh) three times (32, 32 and 16 channels at 8x8,
  16x16, 32x32) -> Conv 3x3 to 3 channels -> sigmoid: an image ``[3, 32, 32]``;
- ``discriminator``: image -> Conv 4x4 stride 2 (32 ch, 16x16) -> LeakyRelu -> Conv 4x4 stride 2
  (64 ch, 8x8) -> BatchNorm -> sigmoid -> ConvTranspose 4x4 stride 2 (16 ch, 16x16) -> tanh ->
  Conv 4x4 stride 4 (16 ch, 4x4) -> tanh -> Flatten -> Linear -> one logit.

For each: a VNN-LIB property (input box of radius ``--eps`` around a random point; unsafe set: the
first output above a threshold just beyond the sampled maximum), then it reports

- ``ibp_s`` / ``crown_s``: seconds of ``BoundEngine.interval_bounds`` and of
  ``BoundEngine.intermediate_bounds(box, "crown")`` (the engine built beforehand);
- ``out_w_ibp`` / ``out_w_crown``: mean width of the output bounds (the output node's
  interval from those bounds, and the CROWN bound of the output rows ``+-e_i``);
- ``last_w_ibp`` / ``last_w_crown``: mean width of the last pre-activation node's bounds;
- ``crown_nodes``: how many nodes got CROWN bounds, of those that feed a nonlinearity;
- ``verify_s`` / ``verdict``: wall time and result of a fresh ``genbab verify`` process.

    python benchmarks/conv_bench.py                    # both models, verify timeout 60 s
    python benchmarks/conv_bench.py --out /tmp/conv --no-verify
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GENBAB = ROOT / ".venv" / "bin" / "genbab"


class Reshape(torch.nn.Module):
    """``x [B, n] -> [B, *shape]`` with a constant target shape (exports as one Reshape)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


def generator(latent: int) -> torch.nn.Module:
    """``z [latent] -> image [3, 32, 32]`` with upsampling, convolutions, BatchNorm, tanh, sigmoid."""
    layers: list[torch.nn.Module] = [torch.nn.Linear(latent, 64 * 4 * 4), Reshape((64, 4, 4))]
    channels = 64
    for out in (32, 32, 16):
        layers += [torch.nn.Upsample(scale_factor=2, mode="nearest"), torch.nn.Conv2d(channels, out, 3, padding=1),
                   torch.nn.BatchNorm2d(out), torch.nn.Tanh()]
        channels = out
    layers += [torch.nn.Conv2d(channels, 3, 3, padding=1), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers)


def discriminator() -> torch.nn.Module:
    """``image [3, 32, 32] -> logit [1]`` with strided convolutions, LeakyRelu, sigmoid, tanh."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 4, stride=2, padding=1), torch.nn.LeakyReLU(0.2),
        torch.nn.Conv2d(32, 64, 4, stride=2, padding=1), torch.nn.BatchNorm2d(64), torch.nn.Sigmoid(),
        torch.nn.ConvTranspose2d(64, 16, 4, stride=2, padding=1), torch.nn.Tanh(),
        torch.nn.Conv2d(16, 16, 4, stride=4), torch.nn.Tanh(),
        torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 1))


def randomize_batchnorm(net: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (an untrained BatchNorm is the identity)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.weight.data.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(0.1 * torch.randn(m.num_features, generator=gen))


def build(name: str, latent: int, seed: int) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(seed)
    net = generator(latent) if name == "generator" else discriminator()
    randomize_batchnorm(net, torch.Generator().manual_seed(seed + 1))
    return net.eval(), ((latent,) if name == "generator" else (3, 32, 32))


def export(net: torch.nn.Module, shape: tuple[int, ...], path: Path) -> None:
    x = torch.zeros(1, *shape)
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["y"], opset_version=11,
                      dynamo=False)


def write_property(net: torch.nn.Module, shape: tuple[int, ...], eps: float, seed: int, path: Path) -> None:
    """Box ``x0 +- eps`` (``x0`` random); unsafe: ``Y_0 >= t``, ``t`` above 1000 sampled outputs."""
    gen = torch.Generator().manual_seed(seed + 2)
    x0 = torch.rand(*shape, generator=gen) if len(shape) > 1 else torch.randn(*shape, generator=gen)
    lo, hi = (x0 - eps).reshape(-1), (x0 + eps).reshape(-1)
    with torch.no_grad():
        xs = lo + (hi - lo) * torch.rand(1000, lo.numel(), generator=gen)
        ys = net(xs.reshape(1000, *shape)).reshape(1000, -1)[:, 0]
    threshold = float(ys.max()) + 0.05 * (float(ys.max() - ys.min()) + 1e-3)
    n_out = math.prod(net(x0.unsqueeze(0)).shape[1:])
    lines = [f"(declare-const X_{i} Real)" for i in range(lo.numel())]
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    for i in range(lo.numel()):
        lines += [f"(assert (>= X_{i} {float(lo[i]):.9f}))", f"(assert (<= X_{i} {float(hi[i]):.9f}))"]
    lines.append(f"(assert (>= Y_0 {threshold:.9f}))")
    path.write_text("\n".join(lines) + "\n")


def measure_bounds(onnx_path: Path, vnnlib_path: Path, repeats: int) -> dict:
    """Times and mean widths of IBP and CROWN intermediate bounds on the property's box."""
    from genbab.bounds import engine_for
    from genbab.model.loading import load_model
    from genbab.spec import load_spec

    torch.set_num_threads(2)
    model = load_model(onnx_path, use_cache=False)
    spec = load_spec(vnnlib_path)
    engine = engine_for(model)
    box = engine.box(spec.lower[:1], spec.upper[:1])
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(repeats):
            ibp = engine.interval_bounds(box)
        ibp_s = (time.perf_counter() - t0) / repeats
        t0 = time.perf_counter()
        for _ in range(repeats):
            crown = engine.intermediate_bounds(box, "crown")
        crown_s = (time.perf_counter() - t0) / repeats
        out = engine.graph.output_name
        out_lo, out_hi = engine.crown_node(out, box, crown)
    width = lambda b: float((b[1] - b[0]).mean())
    last = [n.name for n in engine.nodes if n.name in engine.needs_bounds and n.name != out]
    last = [n for n in last if engine.index[n] < engine.index[out]][-1]
    targets = [n for n in engine.needs_bounds if n != engine.graph.input_name]
    return {"nodes": len(engine.nodes), "ibp_s": round(ibp_s, 3), "crown_s": round(crown_s, 3),
            "out_w_ibp": width(ibp[out]), "out_w_crown": width((torch.maximum(out_lo, crown[out][0]),
                                                                torch.minimum(out_hi, crown[out][1]))),
            "last": f"{last} {list(engine.shapes[last])}", "last_w_ibp": width(ibp[last]),
            "last_w_crown": width(crown[last]),
            "crown_nodes": f"{len(engine.crown_targets & set(targets))}/{len(targets)}"}


def run_verify(onnx_path: Path, vnnlib_path: Path, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        t0 = time.perf_counter()
        subprocess.run([str(GENBAB), "verify", str(onnx_path), str(vnnlib_path), "--timeout", str(timeout),
                        "--json", str(out)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        verdict = json.loads(out.read_text()).get("status", "?") if out.exists() else "no output"
    return {"verify_s": round(wall, 2), "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="folder for the .onnx/.vnnlib files (default: a temp dir)")
    parser.add_argument("--models", nargs="+", default=["generator", "discriminator"])
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--eps", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=60.0, help="genbab verify timeout")
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    tmp = None
    if args.out is None:
        tmp = tempfile.TemporaryDirectory()
        args.out = Path(tmp.name)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        net, shape = build(name, args.latent, args.seed)
        onnx_path, vnnlib_path = args.out / f"{name}.onnx", args.out / f"{name}.vnnlib"
        export(net, shape, onnx_path)
        write_property(net, shape, args.eps, args.seed, vnnlib_path)
        row = {"model": name, **measure_bounds(onnx_path, vnnlib_path, args.repeats)}
        if not args.no_verify:
            row.update(run_verify(onnx_path, vnnlib_path, args.timeout))
        print(json.dumps(row), flush=True)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
