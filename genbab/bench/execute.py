"""Run one instance in its own process: ``python -m genbab.cli verify ... --results-file --json``.

The process gets its own session (process group); past its hard limit the whole group is killed
with SIGKILL. The verdict is read from the results file it wrote: a missing or unreadable file,
or ``error`` in it, is ``error``; a killed process is ``timeout``. Works the same inside a Ray
task, so nothing here may depend on the driver's state.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ALIASES = {"violated": "sat", "holds": "unsat"}  # VNN-COMP 2021 spellings
VERDICTS = ("sat", "unsat", "timeout", "unknown", "error")
LOG_TAIL_CHARS = 4000
_RUNNING: set[subprocess.Popen] = set()  # verifier processes of this process's worker threads
_RUNNING_LOCK = threading.Lock()


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one instance (plain data: it travels to Ray workers)."""

    onnx: str
    vnnlib: str
    verify_args: tuple[str, ...]  # after MODEL SPEC: --timeout, --seed, --device, ...
    kill_after_s: float
    threads: int = 1


@dataclass(frozen=True)
class Outcome:
    """How the run ended: verdict, wall time, what the verifier wrote, and a one-line message."""

    result: str
    run_s: float
    results_text: str = ""
    json_text: str = ""
    returncode: int | None = None
    message: str = ""
    log: str = ""  # the end of the verifier's stdout and stderr


def verdict_of(results_text: str) -> str:
    """The verdict on a results file's first line (``error`` when it is none of the known ones)."""
    lines = results_text.strip().splitlines()
    first = lines[0].strip().lower() if lines else ""
    first = ALIASES.get(first, first)
    return first if first in VERDICTS else "error"


def missing_inputs(job: Job) -> str:
    """A message naming the model/property files that do not exist ('' when both do)."""
    missing = [p for p in (job.onnx, job.vnnlib) if not Path(p).is_file()]
    return "missing file(s): " + ", ".join(missing) if missing else ""


def run_job(job: Job) -> Outcome:
    """Run the verifier on ``job`` in a new process group; never raises for a failing instance."""
    start = time.monotonic()
    message = missing_inputs(job)
    if message:
        return Outcome("error", time.monotonic() - start, message=message)
    with tempfile.TemporaryDirectory(prefix="genbab-bench-") as tmp:
        results, report, log = Path(tmp) / "results.txt", Path(tmp) / "report.json", Path(tmp) / "log.txt"
        cmd = [sys.executable, "-m", "genbab.cli", "verify", job.onnx, job.vnnlib, *job.verify_args,
               "--results-file", str(results), "--json", str(report)]
        env = {**os.environ, "OMP_NUM_THREADS": str(job.threads), "MKL_NUM_THREADS": str(job.threads)}
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
            with _RUNNING_LOCK:
                _RUNNING.add(proc)
            killed = False
            try:
                proc.wait(timeout=max(0.0, job.kill_after_s - (time.monotonic() - start)))
            except subprocess.TimeoutExpired:
                killed = True
                kill_group(proc)
            except BaseException:  # interrupted: take the verifier down with us
                kill_group(proc)
                raise
            finally:
                with _RUNNING_LOCK:
                    _RUNNING.discard(proc)
        run_s = time.monotonic() - start
        log_text = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        tail = log_text.strip().splitlines()[-1:]
        text = results.read_text(errors="replace") if results.exists() else ""
        json_text = report.read_text(errors="replace") if report.exists() else ""
    if killed:
        return Outcome("timeout", run_s, "", "", None, f"killed after {job.kill_after_s:.1f}s", log_text)
    result = verdict_of(text) if text.strip() else "error"
    message = tail[0] if tail else ""
    if not text.strip():
        message = f"exit code {proc.returncode}, no results file" + (f": {message}" if message else "")
    return Outcome(result, run_s, text, json_text, proc.returncode, message, log_text)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` (its children included) and reap ``proc``.

    Called only while ``proc`` is unreaped, so its pid (= the group id) cannot have been reused.
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def kill_running() -> None:
    """Kill every verifier that this process's worker threads are still waiting on (after Ctrl-C)."""
    with _RUNNING_LOCK:
        procs = list(_RUNNING)
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
