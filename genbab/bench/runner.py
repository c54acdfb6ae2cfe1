"""``genbab bench``: run benchmark folders instance by instance, write results.csv, check, score, plot.

Per folder: instances.csv (first ``limit`` lines) minus the rows already in ``out`` (resume) are
run, each in its own process (locally on ``workers`` threads, or as Ray tasks). Each finished
instance is appended to ``out`` at once; its results file and JSON report are kept in
``<out stem>_files/<category>/``. Every ``sat`` witness is replayed independently on
onnxruntime; with a reference.csv each answer is marked and the VNN-COMP score printed. A
``<out stem>_details.csv`` (with consensus, replay, mark, score) is written at the end.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from genbab.bench.categories import DEFAULT_TOML, CategorySettings, load_categories, settings_for
from genbab.bench.errors import BenchError
from genbab.bench.execute import Job, Outcome
from genbab.bench.instances import Instance, Reference, read_instances, read_reference
from genbab.bench.results_csv import Row, append_row, read_rows
from genbab.bench.scoring import SCORES, Tally, mark


@dataclass
class BenchConfig:
    """Options of one ``genbab bench`` run (see :func:`genbab.bench.command.bench`)."""

    out: Path
    timeout_scale: float = 1.0
    limit: int | None = None
    workers: int = 1
    grace: float | None = None  # None: the category's kill_grace_s
    device: str | None = None  # None: the category's device
    categories: Path = DEFAULT_TOML
    ray: str | None = None
    task_cpus: float = 1.0
    task_gpus: float = 0.0
    plot: Path | None = None


@dataclass
class Answer:
    """One instance of this run's selection with its row, reference and checks."""

    instance: Instance
    row: Row
    reference: Reference | None
    witness: str = ""  # '' (not sat), 'ok', 'failed: why' or 'not replayed'
    mark: str = ""


@dataclass
class BenchReport:
    """Everything :func:`run_bench` found: the answers and a tally per benchmark."""

    answers: list[Answer] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=dict)
    scored: dict[str, bool] = field(default_factory=dict)

    @property
    def wrong(self) -> int:
        return sum(t.marks["wrong"] for t in self.tallies.values())

    @property
    def score(self) -> int:
        return sum(t.score for name, t in self.tallies.items() if self.scored[name])


def files_dir(out: Path) -> Path:
    """Where the per-instance results files and JSON reports of ``out`` are kept."""
    return out.parent / f"{out.stem}_files"


def artifact_stem(instance: Instance) -> Path:
    """``<files>/<category>/<onnx name>__<vnnlib name>`` (path separators and odd characters replaced)."""
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", s)

    return Path(clean(instance.category)) / f"{clean(Path(instance.onnx).name)}__{clean(Path(instance.vnnlib).name)}"


def make_job(instance: Instance, settings: CategorySettings, config: BenchConfig, threads: int) -> Job:
    """The job for one instance: scaled timeout, category flags, hard-kill limit."""
    timeout = instance.timeout * config.timeout_scale
    grace = settings.kill_grace_s if config.grace is None else config.grace
    return Job(str(instance.onnx_path.absolute()), str(instance.vnnlib_path.absolute()),
               tuple(settings.verify_args(timeout, config.device)), timeout + grace, threads)


def run_bench(folders: list[Path], config: BenchConfig, console: Console | None = None) -> BenchReport:
    """Run (or resume) the benchmarks in ``folders``; print per-instance lines and a summary."""
    console = console or Console(stderr=True)
    selection, references = select_instances(folders, config.limit)
    try:
        toml = load_categories(config.categories)
        settings = {c: settings_for(toml, c) for c in {i.category for i in selection}}
    except (ValueError, OSError) as err:
        raise BenchError(f"{config.categories}: {err}") from None
    if config.plot is not None:
        from genbab.bench.plot import require_matplotlib

        require_matplotlib()  # fail before the run, not after it
    done = {row.key: row for row in read_rows(config.out)}
    todo = [i for i in selection if i.key not in done]
    answers: dict[tuple[str, str, str], Answer] = {}
    for inst in selection:
        if inst.key in done:
            answers[inst.key] = check(inst, done[inst.key], reference_of(references, inst), stored_results(config.out, inst))
    if done and len(todo) < len(selection):
        console.print(f"resuming {config.out}: {len(selection) - len(todo)} of {len(selection)} instances already done")
    if config.ray:
        threads = max(1, int(config.task_cpus))
    else:
        threads = max(1, (os.cpu_count() or 1) // max(1, config.workers))
    jobs = [(inst, make_job(inst, settings[inst.category], config, threads)) for inst in todo]
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        task = progress.add_task("genbab bench", total=len(jobs))
        for inst, outcome in dispatch(jobs, config):
            row = Row(inst.category, inst.onnx, inst.vnnlib, 0.0, outcome.result, outcome.run_s)
            append_row(config.out, row)
            keep_artifacts(config.out, inst, outcome)
            answer = check(inst, row, reference_of(references, inst), outcome.results_text)
            answers[inst.key] = answer
            progress.console.print(describe(answer, outcome), soft_wrap=True, highlight=False)
            progress.advance(task)
    report = summarize([answers[i.key] for i in selection], references)
    for name, tally in report.tallies.items():
        console.print(tally.line(name, report.scored[name]), highlight=False, soft_wrap=True)
    if any(report.scored.values()):
        console.print(f"VNN-COMP score (+10 correct, -150 wrong): {report.score}", highlight=False)
    write_details(config.out, report)
    if config.plot is not None:
        plot_run(report, config.plot)
        console.print(f"cactus plot: {config.plot}")
    return report


def select_instances(folders: list[Path], limit: int | None) -> tuple[list[Instance], dict[str, dict | None]]:
    """The first ``limit`` instances of each folder (each instance once), and each folder's reference table."""
    selection: list[Instance] = []
    seen: set[tuple[str, str, str]] = set()
    references: dict[str, dict | None] = {}
    for folder in folders:
        try:
            chosen = read_instances(Path(folder))[: limit or None]
        except (OSError, ValueError) as err:
            raise BenchError(str(err)) from None
        if chosen:
            references[chosen[0].category] = read_reference(Path(folder))
        for inst in chosen:
            if inst.key not in seen:
                seen.add(inst.key)
                selection.append(inst)
    return selection, references


def dispatch(jobs: list[tuple[Instance, Job]], config: BenchConfig):
    """Run the jobs on the chosen backend, yielding ``(instance, outcome)`` as each finishes."""
    if config.ray:
        from genbab.bench.ray_backend import run_ray

        return run_ray(jobs, config.ray, config.task_cpus, config.task_gpus)
    from genbab.bench.local_pool import run_local

    return run_local(jobs, config.workers)


def reference_of(references: dict[str, dict | None], inst: Instance) -> Reference | None:
    table = references.get(inst.category)
    return None if table is None else table.get((inst.onnx, inst.vnnlib))


def stored_results(out: Path, inst: Instance) -> str | None:
    """The kept results file of an instance run earlier (None when it is not there)."""
    path = files_dir(out) / artifact_stem(inst).with_suffix(".result.txt")
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def keep_artifacts(out: Path, inst: Instance, outcome: Outcome) -> None:
    """Save the instance's results file, JSON report and a log line beside ``out``."""
    stem = files_dir(out) / artifact_stem(inst)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".result.txt").write_text(outcome.results_text or f"{outcome.result}\n")
    if outcome.json_text:
        stem.with_suffix(".json").write_text(outcome.json_text)
    if outcome.log or outcome.message:
        stem.with_suffix(".log").write_text(outcome.log or outcome.message + "\n")


def check(inst: Instance, row: Row, ref: Reference | None, results_text: str | None) -> Answer:
    """Replay a ``sat`` witness (when its results file is at hand) and mark the answer."""
    witness, ok = "", None
    if row.result == "sat":
        if results_text is None:
            witness = "not replayed (no results file kept)"
        else:
            from genbab.bench.replay import replay_witness

            replay = replay_witness(inst.onnx_path, inst.vnnlib_path, results_text)
            ok = replay.ok
            witness = "ok" if replay.ok else f"failed: {replay.reason}"
    return Answer(inst, row, ref, witness, mark(row.result, ref.consensus if ref else None, ok))


def describe(answer: Answer, outcome: Outcome) -> str:
    """One progress line: benchmark, property, verdict, time, expected verdict, mark, and why."""
    inst, row = answer.instance, answer.row
    text = f"{inst.category} {Path(inst.onnx).name} {Path(inst.vnnlib).name}: {row.result} {row.run_s:.1f}s"
    if answer.reference is not None:
        text += f" (expected {answer.reference.consensus or '?'})"
    if answer.mark:
        text += f" {answer.mark.upper()}"
    if answer.witness and answer.witness != "ok":
        text += f" witness {answer.witness}"
    elif answer.mark == "wrong" and answer.witness == "ok":
        text += " (the witness replays: the reference may be wrong)"
    if (row.result == "error" or outcome.returncode is None) and outcome.message:
        text += f" - {outcome.message}"
    return text


def summarize(answers: list[Answer], references: dict[str, dict | None]) -> BenchReport:
    """Tally verdicts and marks per benchmark (scored where the benchmark has a reference.csv)."""
    report = BenchReport(answers=answers)
    for a in answers:
        name = a.instance.category
        report.tallies.setdefault(name, Tally()).add(a.row.result, a.mark)
        report.scored[name] = references.get(name) is not None
    return report


def write_details(out: Path, report: BenchReport) -> None:
    """``<out stem>_details.csv``: results.csv's columns plus consensus, witness replay, mark and score."""
    path = out.parent / f"{out.stem}_details.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["category", "onnx", "vnnlib", "result", "run_s", "consensus", "witness", "mark", "score"])
        for a in report.answers:
            w.writerow([a.row.category, a.row.onnx, a.row.vnnlib, a.row.result, f"{a.row.run_s:.3f}",
                        a.reference.consensus if a.reference else "", a.witness, a.mark, SCORES[a.mark]])


def plot_run(report: BenchReport, path: Path) -> None:
    """Cactus plot of this run's solved (not wrong) answers beside the reference times of the same instances."""
    from genbab.bench.plot import cactus_plot

    ours = [a.row.run_s for a in report.answers if a.row.result in ("sat", "unsat") and a.mark != "wrong"]
    series = {"genbab (this run)": ours}
    refs = [a.reference for a in report.answers if a.reference is not None]
    if refs:
        series["alpha-beta-CROWN (reference.csv)"] = [r.abcrown_time_s for r in refs if r.abcrown_solved]
    names = ", ".join(report.tallies)
    cactus_plot(series, path, f"{names} ({len(report.answers)} instances)")
