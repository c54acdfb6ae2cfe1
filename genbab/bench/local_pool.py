"""Run jobs on this machine: one at a time, or ``workers`` at once on threads (each runs a process)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

from genbab.bench.execute import Job, Outcome, kill_running, run_job


def run_local(items: Iterable[tuple[Hashable, Job]], workers: int = 1) -> Iterator[tuple[Hashable, Outcome]]:
    """Yield ``(key, outcome)`` as each job finishes; stopping early kills the verifiers still running."""
    items = list(items)
    if workers <= 1:
        for key, job in items:
            yield key, run_job(job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="genbab-bench") as pool:
        futures = {pool.submit(run_job, job): key for key, job in items}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BaseException:  # Ctrl-C or the consumer stopped: cancel what has not started, kill the rest
            for fut in futures:
                fut.cancel()
            kill_running()
            raise
