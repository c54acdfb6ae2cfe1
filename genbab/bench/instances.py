"""A benchmark folder's ``instances.csv`` (``onnx,vnnlib,timeout``, no header) and ``reference.csv``."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instance:
    """One (model, property, timeout) line; ``onnx``/``vnnlib`` are kept as written in instances.csv."""

    category: str
    folder: Path
    onnx: str
    vnnlib: str
    timeout: float

    @property
    def key(self) -> tuple[str, str, str]:
        """Identity in results.csv: ``(category, onnx, vnnlib)``."""
        return (self.category, self.onnx, self.vnnlib)

    @property
    def onnx_path(self) -> Path:
        return self.folder / self.onnx  # an absolute path in instances.csv stays absolute

    @property
    def vnnlib_path(self) -> Path:
        return self.folder / self.vnnlib


@dataclass(frozen=True)
class Reference:
    """What ``reference.csv`` knows about an instance: the consensus verdict and alpha-beta-CROWN's run."""

    consensus: str
    abcrown_result: str = ""
    abcrown_time_s: float | None = None

    @property
    def abcrown_solved(self) -> bool:
        return self.abcrown_result.strip().lower() in ("sat", "unsat") and self.abcrown_time_s is not None


def read_instances(folder: Path, category: str | None = None) -> list[Instance]:
    """Every line of ``folder/instances.csv``; the category defaults to the folder's name."""
    folder = Path(folder)
    path = folder / "instances.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no instances.csv in this benchmark folder")
    category = category or folder.resolve().name
    out = []
    with open(path, newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise ValueError(f"{path}:{lineno}: expected onnx,vnnlib,timeout, got {row!r}")
            onnx, vnnlib, timeout = (c.strip() for c in row)
            try:
                seconds = float(timeout)
            except ValueError:
                raise ValueError(f"{path}:{lineno}: timeout {timeout!r} is not a number") from None
            out.append(Instance(category, folder, onnx, vnnlib, seconds))
    return out


def read_reference(folder: Path) -> dict[tuple[str, str], Reference] | None:
    """``{(onnx, vnnlib): Reference}`` from ``folder/reference.csv``, or None when there is none."""
    path = Path(folder) / "reference.csv"
    if not path.is_file():
        return None
    out = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            time_text = (r.get("abcrown_time_s") or "").strip()
            try:
                seconds = float(time_text) if time_text else None
            except ValueError:
                seconds = None
            out[(r["onnx"].strip(), r["vnnlib"].strip())] = Reference(
                (r.get("consensus") or "").strip().lower(), (r.get("abcrown_result") or "").strip(), seconds)
    return out
