"""The outcome of a verification run, and its VNN-COMP / JSON renderings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from genbab.attack.witness import Witness

STATUSES = ("sat", "unsat", "timeout", "unknown")


@dataclass
class Result:
    """``status`` is ``sat`` (``witness`` holds a replayed counterexample), ``unsat`` (proved),
    ``timeout`` (the budget ran out) or ``unknown`` (gave up before the budget)."""

    status: str
    witness: Witness | None = None
    time_s: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def results_file_text(self) -> str:
        """The VNN-COMP result file: the verdict line, then the witness after ``sat``."""
        if self.status == "sat" and self.witness is not None:
            return f"sat\n{self.witness.to_vnncomp()}\n"
        return f"{self.status}\n"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary: verdict, witness (inputs/outputs as lists), time and statistics."""
        witness = None
        if self.witness is not None:
            witness = {"case": self.witness.case, "margin": self.witness.margin,
                       "x": [float(v) for v in self.witness.x], "y": [float(v) for v in self.witness.y]}
        return {"status": self.status, "time_s": round(self.time_s, 4), "witness": witness, "stats": self.stats}
