"""Live progress on stderr: a one-line rich display on terminals, a line every few seconds elsewhere."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text


class ProgressReporter:
    """Callable progress sink for :func:`genbab.api.verify`; use as a context manager."""

    def __init__(self, quiet: bool = False, interval_s: float = 5.0):
        self.console = Console(stderr=True)
        self.quiet = quiet
        self.interval_s = interval_s
        self.live: Live | None = None
        self.last_line = 0.0
        self.start = time.monotonic()

    def __enter__(self) -> "ProgressReporter":
        if not self.quiet and self.console.is_terminal:
            self.live = Live(Text(""), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def __call__(self, phase: str, stats, remaining_s: float) -> None:
        """Show ``phase`` with its ``stats`` (:class:`~genbab.attack.pgd.AttackStats` for the attack,
        :class:`~genbab.api.BabProgress` for branch and bound) and the seconds left."""
        if self.quiet:
            return
        if phase == "attack":
            detail = (f"round {stats.rounds}, {stats.points} starts, {stats.steps} steps, "
                      f"best margin {stats.best_margin:.4g}")
        elif phase == "bab":
            detail = (f"branch and bound, case {stats.case}: {stats.visited} domains bounded, {stats.open} open, "
                      f"worst bound {stats.worst_bound:.4g}, depth {stats.max_depth}")
        else:
            detail = "alpha-CROWN on every case"
        line = f"[{time.monotonic() - self.start:6.1f}s] {phase}: {detail}, {max(remaining_s, 0):.0f}s left"
        if self.live is not None:
            self.live.update(Text(line))
        elif time.monotonic() - self.last_line >= self.interval_s:
            self.last_line = time.monotonic()
            self.console.print(line, highlight=False, soft_wrap=True)
