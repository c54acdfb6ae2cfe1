"""The ``genbab bench`` click command (light to import: the runner is loaded when it runs)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import click


class _BenchInputError(click.ClickException):
    """A benchmark folder, category file or optional package that cannot be used: exit 2 (1 means a wrong answer)."""

    exit_code = 2


@click.command("bench")
@click.argument("bench_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The competition's results.csv (category,onnx,vnnlib,prepare_s,result,run_s); rows "
                   "already there are skipped (resume).")
@click.option("--timeout-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Multiply every instance's timeout by this.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the first N instances of each benchmark.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Instances run at once (local runs).")
@click.option("--grace", type=click.FloatRange(min=0),
              help="Seconds past the timeout before the process group is killed [default: the category's kill_grace_s].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Override the category's device.")
@click.option("--categories", type=click.Path(dir_okay=False, path_type=Path),
              help="Per-category settings [default: vnncomp/categories.toml of this checkout].")
@click.option("--ray", "ray_address", metavar="auto|ADDRESS",
              help="Run instances as Ray tasks: 'auto' starts a local cluster, else the address of one.")
@click.option("--task-cpus", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="CPUs each Ray task reserves.")
@click.option("--task-gpus", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="GPUs each Ray task reserves.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a cactus plot (PNG) of this run beside reference.csv's alpha-beta-CROWN times.")
def bench(bench_dirs: tuple[Path, ...], out: Path, timeout_scale: float, limit: int | None, workers: int,
          grace: float | None, device: str | None, categories: Path | None, ray_address: str | None,
          task_cpus: float, task_gpus: float, plot: Path | None) -> None:
    """Run VNN-COMP benchmark folders (each with an instances.csv) and score them.

    Every instance runs in its own `genbab verify` process, killed at timeout + grace. Writes
    results.csv, keeps each results file and JSON report in OUT_files/, replays every sat witness
    on onnxruntime and, where a folder has reference.csv, marks answers correct/wrong and prints
    the VNN-COMP score. Exits 1 when an answer is wrong.
    """
    from genbab.bench.categories import DEFAULT_TOML
    from genbab.bench.errors import BenchError
    from genbab.bench.instances import read_instances, read_reference
    from genbab.bench.runner import BenchConfig, run_bench

    if categories is not None and not categories.is_file():
        raise click.BadParameter(f"{categories} does not exist", param_hint="--categories")
    for folder in bench_dirs:  # read the instance lists first: a bad one is exit 2, not 1 (wrong answer)
        try:
            read_instances(folder)
            read_reference(folder)
        except (OSError, ValueError, KeyError, csv.Error) as err:
            message = str(err) if not isinstance(err, KeyError) else f"missing column {err}"
            raise _BenchInputError(f"{folder}: {message}" if str(folder) not in message else message) from None
    config = BenchConfig(out=out, timeout_scale=timeout_scale, limit=limit, workers=workers, grace=grace,
                         device=device, categories=categories or DEFAULT_TOML, ray=ray_address,
                         task_cpus=task_cpus, task_gpus=task_gpus, plot=plot)
    try:
        report = run_bench(list(bench_dirs), config)
    except BenchError as err:
        raise _BenchInputError(str(err)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted; run the same command again to resume from {out}", err=True)
        sys.exit(130)
    click.echo(f"results: {out}  (score {report.score}, wrong {report.wrong})")
    if report.wrong:
        sys.exit(1)
