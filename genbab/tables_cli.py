"""The ``genbab tables`` click group: rebuild and inspect the branching-point tables."""

from __future__ import annotations

from pathlib import Path

import click


def _spec_keys() -> list[str]:
    from genbab.lookup_tables.build import SPECS

    return list(SPECS)


@click.group("tables")
def tables() -> None:
    """Pre-optimized branching-point tables (lookup_tables/)."""


@tables.command("build")
@click.option("--op", "ops", multiple=True, metavar="KEY",
              help="1-D table to build (repeatable; e.g. Sigmoid, Gelu_tanh) [default: all].")
@click.option("--products/--no-products", default=None,
              help="Also build the product (Mul) table [default: only when no --op is given].")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: the package's lookup_tables folder].")
@click.option("--step", type=click.FloatRange(min=0, min_open=True), default=0.01, show_default=True,
              help="Grid step of the 1-D tables.")
@click.option("--threads", type=click.IntRange(min=1, max=2), default=1, show_default=True,
              help="torch threads (a second one rarely helps on a shared 2-core machine).")
def build(ops: tuple[str, ...], products: bool | None, out_dir: Path | None, step: float,
          threads: int) -> None:
    """Compute the split points minimizing the children's total looseness and save them."""
    from genbab.bab.branch_points import clear_cache
    from genbab.lookup_tables import build as builder

    known = _spec_keys()
    unknown = [k for k in ops if k not in known]
    if unknown:
        raise click.BadParameter(f"unknown table(s) {unknown}; known: {', '.join(known)}", param_hint="--op")
    keys = list(ops) or known
    products = (not ops) if products is None else products
    out_dir = builder.TABLE_DIR if out_dir is None else out_dir

    def report(key: str, seconds: float, size: int) -> None:
        click.echo(f"{key:<12} {seconds:7.2f} s  {size / 1024:8.1f} KiB  {builder.table_path(key, out_dir)}")

    times = builder.build_all(keys, out_dir, step=step, products=products, threads=threads, report=report)
    clear_cache()
    click.echo(f"{'total':<12} {sum(times.values()):7.2f} s")


@tables.command("list")
@click.option("--dir", "folder", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="Table folder [default: the package's lookup_tables folder].")
def list_tables(folder: Path | None) -> None:
    """Show the tables present and their grids."""
    import numpy as np

    from genbab.bab.branch_points import available_tables, table_dir

    folder = table_dir() if folder is None else folder
    for key in available_tables(folder):
        path = folder / f"branch_{key}.npz"
        with np.load(path) as z:
            if "rho_step" in z:
                grid = f"rho in [-1, 1] step {float(z['rho_step']):g} ({int(z['n'])}^2 cells)"
            else:
                lo, step, n = float(z["lo"]), float(z["step"]), int(z["n"])
                grid = f"[{lo:g}, {lo + step * (n - 1):g}] step {step:g} ({n} points)"
        click.echo(f"{key:<12} {grid:<45} {path.stat().st_size / 1024:8.1f} KiB")
