"""Cactus plot: instances solved against cumulative time, this run beside reference times.

matplotlib is an optional dependency (``pip install 'genbab[plot]'``), imported only here.
"""

from __future__ import annotations

from pathlib import Path

from genbab.bench.errors import BenchError


def require_matplotlib() -> None:
    """Raise a BenchError saying how to install matplotlib when it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install 'genbab[plot]'") from None


def cactus_plot(series: dict[str, list[float]], path: Path, title: str = "") -> None:
    """Write a PNG with one step curve per series: x = cumulative solve time, y = instances solved."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    curves = {label: cumulative_times(times) for label, times in series.items()}
    longest = max((c[-1] for c in curves.values() if c), default=1.0) * 1.05
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, cumulative in curves.items():
        ax.step([0.0, *cumulative, longest], [0, *range(1, len(cumulative) + 1), len(cumulative)], where="post",
                label=f"{label} ({len(cumulative)} solved)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cumulative time of solved instances (s)")
    ax.set_ylabel("instances solved")
    ax.set_xlim(left=0.0, right=max(longest, 1.0))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cumulative_times(times: list[float]) -> list[float]:
    """Running totals of the times sorted fastest first: where each further instance counts as solved."""
    out, total = [], 0.0
    for t in sorted(times):
        total += max(t, 0.0)
        out.append(total)
    return out
