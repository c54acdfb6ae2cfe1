"""The ``genbab`` command line.

Exit codes: 0 for any verdict (``sat``/``unsat``/``timeout``/``unknown``), 2 for a model,
property, option or output path that cannot be used (one line on stderr, no traceback), 1 for an
internal error, 130 after SIGINT and 143 after SIGTERM (the results file then says ``timeout``).
"""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
import traceback
from pathlib import Path

import click

from genbab.errors import GenbabError


_WORKERS: list = []  # the verify worker thread, checked at exit
_FAST_EXIT: list = []  # set by ``verify``: :func:`run` then ends the process without interpreter teardown
MAX_WAIT_S = 1e7  # a longer --timeout (inf, 1e12) means "no limit" but would overflow thread waits
MAX_SEED = 2**63 - 1
GRACE_S = 0.5  # the worker gets this long past the deadline to hand back its own result


class _OneLineGroup(click.Group):
    """A click group whose errors are one ``error: ...`` line on stderr instead of a usage block."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(2)
        except click.ClickException as err:
            click.echo(f"error: {err.format_message()}", err=True)
            sys.exit(err.exit_code)
        except click.exceptions.Abort as err:
            if isinstance(err.__cause__, KeyboardInterrupt):
                click.echo("interrupted (SIGINT)", err=True)
                sys.exit(130)
            click.echo("error: aborted", err=True)
            sys.exit(1)
        except OSError as err:
            if err.errno == errno.EPIPE:  # stdout closed early (| head): as click does, quietly
                sys.stdout = click.utils.PacifyFlushWrapper(sys.stdout)
                sys.exit(1)
            raise
        sys.exit(rv if isinstance(rv, int) else 0)


class _Seconds(click.FloatRange):
    """A non-negative number of seconds; ``nan`` is refused, ``inf`` means no limit."""

    name = "seconds"

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if math.isnan(rv):
            self.fail(f"{value!r} is not a number of seconds.", param, ctx)
        return rv


def _stopping_handler(results_file: Path | None):
    """A SIGINT/SIGTERM handler that ends the process itself (``_stop``: results file ``timeout``,
    one line, exit 130/143). Raising into the main thread instead can be swallowed or mangled when
    the signal lands inside an import (torch's, numpy's), so the handler never raises."""
    def handle(signum, frame) -> None:
        if signum == signal.SIGINT:
            _stop(results_file, "interrupted (SIGINT)", 130)
        _stop(results_file, "terminated (SIGTERM)", 143)
    return handle


def _check_writable(path: Path | None, option: str) -> None:
    """Refuse an output path that cannot be written, before any work (exit 2, one line)."""
    if path is None:
        return
    parent = path.parent
    try:
        if path.is_dir():
            problem = "is a directory"
        elif not parent.exists():
            problem = f"its directory {parent} does not exist"
        elif not parent.is_dir():
            problem = f"{parent} is not a directory"
        elif not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
            problem = "is not writable"
        else:
            return
    except OSError as err:  # e.g. a name too long for the file system
        problem = f"cannot be used ({err.strerror or err})"
    click.echo(f"error: {option} {path}: {problem}", err=True)
    sys.exit(2)



class ThreadsType(click.ParamType):
    """``auto`` or a whole number of threads from 1 to 4096."""

    name = "auto|N"

    def convert(self, value, param, ctx):
        if value == "auto" or isinstance(value, int):
            return value
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a whole number", param, ctx)
        if not 1 <= n <= 4096:
            self.fail(f"{n} is not in the range 1<=x<=4096", param, ctx)
        return n


def with_options(config, options: tuple[str, ...]):
    """``config`` (a dataclass) with ``KEY=VALUE`` settings, each value read as its field's type
    (bool: true/false/1/0, int, float, str); ValueError names an unknown key or a bad value."""
    import dataclasses

    fields = {f.name: str(f.type) for f in dataclasses.fields(config)}
    changes = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"{option!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(fields))}")
        kind, text = fields[key], text.strip()
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1")
            elif kind in ("int", "float"):
                value = int(text) if kind == "int" else float(text)
            else:
                value = text
        except ValueError:
            raise ValueError(f"{option!r}: {key} takes {'an' if kind == 'int' else 'a'} {kind}") from None
        changes[key] = value
    return dataclasses.replace(config, **changes)


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)

@click.group(cls=_OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genbab")
def main() -> None:
    """genbab: verify neural networks with general nonlinearities (ONNX + VNN-LIB)."""


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", type=_Seconds(min=0), default=300.0, show_default=True,
              help="Wall-clock budget in seconds from process start, start-up and loading included (inf: no limit).")
@click.option("--results-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the VNN-COMP result file (verdict line, witness after sat).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write verdict, witness, timings and statistics as JSON.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Where the model, attacks, bounds and branch and bound run (auto: CUDA when available).")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of the random restarts.")
@click.option("--no-bab", is_flag=True, help="Attack, then alpha-CROWN on every disjunct; no branching.")
@click.option("--no-bounds", is_flag=True, help="Attack only: never prove (answers sat or timeout).")
@click.option("--quiet", is_flag=True, help="No progress on stderr.")
@click.option("--branching", type=click.Choice(["bbps", "babsr"]), default="bbps", show_default=True,
              help="Neuron choice in branch and bound: BBPS (shortcut estimates) or the intercept-only score.")
@click.option("--branching-points", type=click.Choice(["opt", "uniform"]), default="opt", show_default=True,
              help="Split points of smooth ops: pre-optimised lookup tables or midpoints.")
@click.option("--kernels", type=click.Choice(["auto", "triton", "torch"]), default="auto", show_default=True,
              help="Bound kernels: Triton on CUDA (auto), or force one path; triton on the CPU needs TRITON_INTERPRET=1.")
@click.option("--precision", type=click.Choice(["auto", "float32", "float64"]), default="auto", show_default=True,
              help="Bound arithmetic (auto: float64); both are sound.")
@click.option("--threads", type=ThreadsType(), default="auto", show_default=True,
              help="CPU threads for tensor work; auto: one for the many small bound steps, every core for "
                   "the wide input-split passes.")
@click.option("--bab-option", "bab_options", multiple=True, metavar="KEY=VALUE",
              help="Set one branch-and-bound setting (a field of genbab.bab.loop.BabConfig, e.g. "
                   "shared_frontier=false), for experiments and ablations; repeatable.")
def verify(model: Path, spec: Path, timeout: float, results_file: Path | None, json_path: Path | None,
           device: str, seed: int, no_bab: bool, no_bounds: bool, quiet: bool, branching: str,
           branching_points: str, kernels: str, precision: str, threads: int | str,
           bab_options: tuple[str, ...] = ()) -> None:
    """Check MODEL (.onnx[.gz]) against the VNN-LIB property SPEC (.vnnlib[.gz])."""
    _FAST_EXIT.append(True)
    _check_writable(results_file, "--results-file")
    _check_writable(json_path, "--json")
    timeout = min(timeout, MAX_WAIT_S)
    handler = _stopping_handler(results_file)
    try:
        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread (an embedding caller): keep its handlers
        previous = {}
    try:
        _verify(model, spec, timeout, results_file, json_path, device, seed, no_bab, no_bounds, quiet, branching,
                branching_points, kernels, threads, precision, bab_options)
    except KeyboardInterrupt:  # an embedding caller's own SIGINT handling raised it
        _stop(results_file, "interrupted (SIGINT)", 130)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _verify(model: Path, spec: Path, timeout: float, results_file: Path | None, json_path: Path | None,
            device: str, seed: int, no_bab: bool, no_bounds: bool, quiet: bool, branching: str,
            branching_points: str, kernels: str, threads: int | str, precision: str = "auto",
            bab_options: tuple[str, ...] = ()) -> None:
    from genbab.memory_tuning import tune_malloc

    tune_malloc()  # keep freed tensor memory in the heap (glibc only): page faults cost more than bounds
    import torch

    from genbab.bab.loop import BabConfig
    from genbab.bounds.config import EngineConfig

    wide_threads = usable_cores() if threads == "auto" else threads
    torch.set_num_threads(1 if threads == "auto" else threads)
    try:  # refuses cuda without CUDA, triton without triton or on a device it cannot serve, before any work
        EngineConfig.resolve(device, kernels)
    except GenbabError as err:
        _fail(results_file, f"error: {err}", 2)
    bab_config = BabConfig(branching=branching, branching_points=branching_points, input_threads=wide_threads)
    try:
        bab_config = with_options(bab_config, bab_options)
    except ValueError as err:
        _fail(results_file, f"error: --bab-option: {err}", 2)
    try:
        from genbab.spec import load_model_and_spec  # a VNN-LIB 2.0 query over several inputs/outputs: composed

        model, spec = load_model_and_spec(model, spec)
        result = _run_verify(model, spec, timeout, device, seed, quiet, bounds=not no_bounds, bab=not no_bab,
                             bab_config=bab_config, kernels=kernels, precision=precision)
    except GenbabError as err:
        _fail(results_file, f"error: {err}", 2)
    except Exception as err:  # an internal error: say so plainly, trace only on request
        if os.environ.get("GENBAB_DEBUG"):
            traceback.print_exc()
        _fail(results_file, f"internal error: {type(err).__name__}: {err} (set GENBAB_DEBUG=1 for a traceback)", 1)
    write_errors = []
    for path, text in ((results_file, lambda: result.results_file_text()),
                       (json_path, lambda: json.dumps(result.to_json(), indent=2) + "\n")):
        if path is not None:
            try:
                path.write_text(text())
            except OSError as err:
                write_errors.append(f"error: cannot write {path}: {err.strerror or err}")
    click.echo(f"{result.status}  ({result.time_s:.2f}s)")
    if result.status == "sat" and result.witness is not None and (results_file is None or write_errors):
        click.echo(result.witness.to_vnncomp())
    code = 0
    if write_errors:
        click.echo(write_errors[0], err=True)  # one line, the verdict is on stdout
        code = 2
    if _WORKERS and _WORKERS[-1].is_alive():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # ends the worker thread still inside a long bound step
    if code:
        sys.exit(code)


def _run_verify(model: Path, spec: Path, timeout: float, device: str, seed: int, quiet: bool, bounds: bool,
                bab: bool, bab_config, kernels: str = "auto", precision: str = "auto"):
    """Run :func:`genbab.api.verify` in a worker thread; answer ``timeout`` at the deadline.

    The library checks its deadline between steps, but one step (an alpha iteration on a big
    model, say) can outlast it; the command line promises the timeout within 2 s, so it stops
    waiting at the deadline plus GRACE_S and reports ``timeout`` (``main`` then exits the
    process, ending the worker)."""
    import threading
    import time

    from genbab.api import verify as api_verify
    from genbab.progress import ProgressReporter
    from genbab.result import Result

    start = time.monotonic()
    startup = process_age()  # VNN-COMP times the whole process: its deadline starts at exec, not here
    timeout = max(0.0, timeout - startup)
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = api_verify(model, spec, timeout=timeout, seed=seed, device=device, kernels=kernels,
                                           precision=precision,
                                           bounds=bounds, bab=bab, bab_config=bab_config, progress=reporter)
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err

    with ProgressReporter(quiet=quiet) as reporter:
        worker = threading.Thread(target=work, name="genbab-verify", daemon=True)
        _WORKERS.append(worker)
        worker.start()
        deadline = time.monotonic() + min(timeout, MAX_WAIT_S) + GRACE_S
        while worker.is_alive():  # short waits: SIGINT/SIGTERM reach the main thread promptly
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            worker.join(min(0.2, remaining))
    if "error" in outcome:
        raise outcome["error"]
    if "result" in outcome:
        outcome["result"].stats["startup_s"] = round(startup, 3)
        return outcome["result"]
    return Result("timeout", None, time.monotonic() - start, {"stopped_by": "the command line's deadline",
                                                             "startup_s": round(startup, 3)})


def process_age() -> float:
    """Seconds since this process was started (Linux ``/proc``, 10 ms resolution; 0.0 elsewhere)."""
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after "pid (comm)": field 3 onwards
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))  # field 22: start time
    except (OSError, ValueError, IndexError):
        return 0.0


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
def prepare(models: tuple[Path, ...]) -> None:
    """Translate MODELS (.onnx[.gz]) once and keep their folded graphs in the graph cache.

    Later runs on the same model bytes then start without importing onnx or onnx2torch (see
    ``genbab.model.cache``; ``GENBAB_CACHE_DIR`` chooses the folder, ``off`` disables it)."""
    from genbab.model import cache
    from genbab.model.files import read_bytes
    from genbab.model.loading import load_model

    folder = cache.cache_dir()
    if folder is None:
        click.echo("error: the graph cache is off (GENBAB_CACHE_DIR=off)", err=True)
        sys.exit(2)
    failed = False
    for path in models:
        try:
            raw = read_bytes(path)
            if cache.load(raw, str(path)) is None:
                model = load_model(path, use_cache=False)
                entry = cache.store(model, raw)
            else:
                entry = folder / f"{cache.cache_key(raw)}.pt"
        except GenbabError as err:
            click.echo(f"error: {err}", err=True)
            failed = True
            continue
        if entry is None:
            click.echo(f"{path}: loaded, not cached (its graph is not portable or {folder} is not writable)")
        else:
            click.echo(f"{path}: cached as {entry}")
    if failed:
        sys.exit(2)


def _fail(results_file: Path | None, message: str, code: int) -> None:
    click.echo(message, err=True)
    if results_file is not None:
        try:
            results_file.write_text("error\n")
        except OSError:
            pass
    sys.exit(code)


def _stop(results_file: Path | None, message: str, code: int) -> None:
    """After a signal: the results file says ``timeout`` (unfinished), one line, and the process ends."""
    if results_file is not None:
        try:
            results_file.write_text("timeout\n")
        except OSError:
            pass
    click.echo(message, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # the worker thread may be inside torch code: a normal exit would abort


from genbab.bench.command import bench as _bench_command  # noqa: E402  (light: the runner loads lazily)
from genbab.bench.vnnlib2_cli import vnnlib2 as _vnnlib2_command  # noqa: E402

from genbab.tables_cli import tables as _tables_command  # noqa: E402

main.add_command(_bench_command)
main.add_command(_vnnlib2_command)
main.add_command(_tables_command)


def run() -> None:
    """The console entry point: :func:`main`; after ``verify`` (its files written, its output
    flushed) the process ends at once: tearing down an interpreter with torch loaded takes about a
    second, which VNN-COMP would count against the timeout."""
    try:
        main()
        code = 0
    except SystemExit as exit_:
        if not _FAST_EXIT:
            raise
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
