"""Correctness against ``reference.csv`` and the VNN-COMP score (+10 correct, -150 wrong, 0 otherwise).

An answer is *wrong* when it is ``sat`` and the consensus ``unsat`` or the reverse, or when it is
``sat`` and its witness fails the independent replay. It is *correct* when it matches a ``sat`` /
``unsat`` consensus, or is ``sat`` with a replayed witness where nobody knows. An ``unsat`` that
nobody can check (consensus ``unknown``/``CONFLICT``) is *unchecked*: it scores +10, as it would in
the competition while no tool finds a counterexample. Timeouts, unknowns and errors score 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SCORES = {"correct": 10, "unchecked": 10, "wrong": -150, "": 0}


def mark(result: str, consensus: str | None, witness_ok: bool | None) -> str:
    """``correct``, ``wrong``, ``unchecked`` or '' (no verdict) for one answer.

    ``witness_ok`` is the replay outcome of a ``sat`` answer (None: not replayed).
    """
    consensus = (consensus or "").lower()
    if result == "sat":
        if witness_ok is False or consensus == "unsat":
            return "wrong"
        return "correct" if witness_ok or consensus == "sat" else "unchecked"
    if result == "unsat":
        if consensus == "sat":
            return "wrong"
        return "correct" if consensus == "unsat" else "unchecked"
    return ""


@dataclass
class Tally:
    """Verdict and mark counts of one benchmark, and its score."""

    results: Counter = field(default_factory=Counter)
    marks: Counter = field(default_factory=Counter)

    def add(self, result: str, mark_: str) -> None:
        self.results[result] += 1
        self.marks[mark_ or "none"] += 1

    @property
    def score(self) -> int:
        return sum(SCORES[m if m != "none" else ""] * n for m, n in self.marks.items())

    @property
    def total(self) -> int:
        return sum(self.results.values())

    def line(self, name: str, scored: bool) -> str:
        """A one-line summary, with the score when a reference was available."""
        parts = [f"{k} {self.results[k]}" for k in ("sat", "unsat", "timeout", "unknown", "error") if self.results[k]]
        text = f"{name}: {self.total} instances: " + (", ".join(parts) or "none run")
        if scored:
            text += (f" | correct {self.marks['correct']}, wrong {self.marks['wrong']}"
                     f", unchecked {self.marks['unchecked']} | score {self.score}")
        return text
