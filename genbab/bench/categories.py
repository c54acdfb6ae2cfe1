"""Per-category settings of ``vnncomp/categories.toml``: timeout margin, kill grace, seed, device
and extra ``genbab verify`` flags, with a ``[default]`` table that every category inherits.

Stdlib only, on purpose: ``vnncomp/run_instance.sh`` runs this file by path
(``python genbab/bench/categories.py TOML CATEGORY TIMEOUT``) so that it does not pay for
importing torch twice. That prints the hard-kill limit in seconds on the first line, then the
``genbab verify`` arguments one per line.
"""

from __future__ import annotations

import math
import sys
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

DEFAULT_TOML = Path(__file__).resolve().parents[2] / "vnncomp" / "categories.toml"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class CategorySettings:
    """How one category's instances are run (see ``vnncomp/categories.toml`` for each key)."""

    timeout_margin_s: float = 1.0
    min_timeout_s: float = 1.0
    kill_grace_s: float = 10.0
    seed: int = 0
    device: str = "auto"
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    def verify_timeout(self, timeout: float) -> float:
        """The budget handed to ``genbab verify``: the instance timeout less the margin, at least the minimum."""
        return max(self.min_timeout_s, timeout - self.timeout_margin_s)

    def kill_after(self, timeout: float) -> float:
        """Seconds after which the verifier process is killed outright."""
        return timeout + self.kill_grace_s

    def verify_args(self, timeout: float, device: str | None = None) -> list[str]:
        """``genbab verify`` flags (after MODEL SPEC) for an instance with this competition timeout.

        The device goes through as given (``auto`` included): ``genbab verify`` resolves ``auto``
        itself (CUDA when torch sees one), on the machine that runs the instance."""
        return ["--timeout", f"{self.verify_timeout(timeout):.3f}", "--seed", str(self.seed),
                "--device", device or self.device, "--quiet", *self.extra_args]


def load_categories(path: Path = DEFAULT_TOML) -> dict:
    """The parsed TOML (``{}`` when the file does not exist)."""
    if not Path(path).exists():
        return {}
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def settings_for(config: dict, category: str) -> CategorySettings:
    """``[default]`` overlaid with ``[categories.<category>]`` (names compared case-insensitively)."""
    merged = dict(config.get("default", {}))
    tables = {name.lower(): table for name, table in config.get("categories", {}).items()}
    merged.update(tables.get(category.lower(), {}))
    known = {f.name for f in fields(CategorySettings)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in categories.toml for {category!r}: {', '.join(unknown)}")
    if "extra_args" in merged:
        merged["extra_args"] = tuple(str(a) for a in merged["extra_args"])
    settings = CategorySettings(**merged)
    if settings.device not in DEVICES:
        raise ValueError(f"categories.toml: device must be one of {DEVICES}, got {settings.device!r}")
    return settings


def main(argv: list[str]) -> int:
    """``categories.py TOML CATEGORY TIMEOUT``: kill limit, then verify arguments, one per line."""
    if len(argv) != 3:
        print("usage: categories.py CATEGORIES_TOML CATEGORY TIMEOUT_S", file=sys.stderr)
        return 2
    try:
        timeout = float(argv[2])
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {argv[2]!r}")
        settings = settings_for(load_categories(Path(argv[0])), argv[1])
    except (ValueError, tomllib.TOMLDecodeError, OSError) as err:
        print(f"categories: {err}", file=sys.stderr)
        return 2
    print(f"{settings.kill_after(timeout):.3f}")
    print("\n".join(settings.verify_args(timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
