"""The competition's ``results.csv``: ``category,onnx,vnnlib,prepare_s,result,run_s``, no header.

Rows are appended (and flushed) one at a time, so a run that is stopped half-way can be resumed:
:func:`read_rows` skips a torn last line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

RESULTS = ("sat", "unsat", "timeout", "unknown", "error")


@dataclass(frozen=True)
class Row:
    """One finished instance."""

    category: str
    onnx: str
    vnnlib: str
    prepare_s: float
    result: str
    run_s: float

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.category, self.onnx, self.vnnlib)

    def to_csv(self) -> str:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(
            [self.category, self.onnx, self.vnnlib, f"{self.prepare_s:.3f}", self.result, f"{self.run_s:.3f}"])
        return buf.getvalue()


def read_rows(path: Path) -> list[Row]:
    """The well-formed rows of ``path`` (none when it does not exist); later rows win for a repeated key."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[tuple[str, str, str], Row] = {}
    with open(path, newline="") as fh:
        for rec in csv.reader(fh):
            if len(rec) != 6 or rec[4].strip() not in RESULTS:
                continue  # a header, a blank line or a line torn by an interrupted write
            try:
                row = Row(rec[0], rec[1], rec[2], float(rec[3]), rec[4].strip(), float(rec[5]))
            except ValueError:
                continue
            rows[row.key] = row
    return list(rows.values())


def append_row(path: Path, row: Row) -> None:
    """Append one row, first ending a torn last line so that it cannot swallow this one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.exists() and path.stat().st_size > 0:
        with open(path, "rb") as fh:
            fh.seek(-1, 2)
            if fh.read(1) != b"\n":
                prefix = "\n"
    with open(path, "a", newline="") as fh:
        fh.write(prefix + row.to_csv())
        fh.flush()
