"""Time the Triton kernels against the PyTorch paths over batch sizes (for whoever has a GPU).

    .venv/bin/python benchmarks/kernel_bench.py [--device cuda] [--batches 1,8,64,512] [--n 1024]

Per batch size ``B`` (domains) with ``S`` spec rows and ``n`` neurons, it times:

- ``concretize``: ``min A x + b`` over boxes, ``A`` ``[B, S, n]``;
- ``backward``: one elementwise backward step, ``A`` ``[B, S, n]``, lines ``[B, 1, n]``;
- ``relax-<op>``: the relaxation of ``B * n`` neurons (Sigmoid, Tanh, Sin, Gelu), float32 lines.

On CUDA both the Triton kernel and the PyTorch path run (synchronised, median of repeats) and
the maximum difference is printed. On the CPU only the PyTorch path is timed: Triton runs there
only through its interpreter (``TRITON_INTERPRET=1``), whose timings mean nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timeit(fn, device: torch.device, repeats: int = 10) -> float:
    """Median wall time of ``fn()`` in milliseconds (one warm-up call)."""
    fn()
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def cases(B: int, S: int, n: int, device: torch.device):
    """``(name, torch_fn, triton_fn or None)`` for one batch size."""
    from genbab.bounds.box import Box, concretize_lower
    from genbab.bounds.nonlinear import elementwise_backward
    from genbab.ops import OP_RELAXATIONS
    g = torch.Generator(device="cpu").manual_seed(0)
    A = torch.randn(B, S, n, generator=g, dtype=torch.float64).to(device)
    b = torch.randn(B, S, generator=g, dtype=torch.float64).to(device)
    lo = torch.randn(B, n, generator=g, dtype=torch.float64).to(device)
    up = lo + torch.rand(B, n, generator=g, dtype=torch.float64).to(device)
    lines = OP_RELAXATIONS["Sigmoid"].relax(lo.unsqueeze(1), up.unsqueeze(1))
    gpu = device.type == "cuda"

    out = [("concretize", lambda: concretize_lower(A, b, Box(lo, up), "torch"),
            (lambda: concretize_lower(A, b, Box(lo, up), "triton")) if gpu else None),
           ("backward", lambda: elementwise_backward(A, lines, "torch"),
            (lambda: elementwise_backward(A, lines, "triton")) if gpu else None)]
    l32, u32 = lo.float(), up.float()
    for op in ("Sigmoid", "Tanh", "Sin", "Gelu"):
        from genbab.kernels.relax import relax_reference
        torch_fn = (lambda op=op: relax_reference(op, l32, u32))
        triton_fn = None
        if gpu:
            from genbab.kernels.relax import relax_triton
            triton_fn = (lambda op=op: relax_triton(op, l32, u32))
        out.append((f"relax-{op}", torch_fn, triton_fn))
    return out


def max_diff(x, y) -> float:
    xs = x if isinstance(x, tuple) else (x.__dict__.values() if hasattr(x, "__dict__") else (x,))
    ys = y if isinstance(y, tuple) else (y.__dict__.values() if hasattr(y, "__dict__") else (y,))
    return max(float((a.double() - b.double()).abs().nan_to_num(0.0).max()) for a, b in zip(xs, ys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="1,8,64,512")
    ap.add_argument("--specs", type=int, default=9)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type != "cuda":
        print("# no CUDA device: timing the PyTorch path only (Triton on the CPU runs only through "
              "its interpreter, TRITON_INTERPRET=1, whose timings are meaningless)")
    else:
        print(f"# device: {torch.cuda.get_device_name(device)}")
    print(f"# S={args.specs} spec rows, n={args.n} neurons, median of {args.repeats} runs, ms")
    print(f"{'case':16s} {'B':>5s} {'torch':>10s} {'triton':>10s} {'speedup':>8s} {'max diff':>10s}")
    for B in [int(x) for x in args.batches.split(",")]:
        for name, torch_fn, triton_fn in cases(B, args.specs, args.n, device):
            t_torch = timeit(torch_fn, device, args.repeats)
            if triton_fn is None:
                print(f"{name:16s} {B:5d} {t_torch:10.3f} {'-':>10s} {'-':>8s} {'-':>10s}")
                continue
            t_tri = timeit(triton_fn, device, args.repeats)
            diff = max_diff(torch_fn(), triton_fn())
            print(f"{name:16s} {B:5d} {t_torch:10.3f} {t_tri:10.3f} {t_torch / t_tri:8.2f} {diff:10.2e}")


if __name__ == "__main__":
    main()
