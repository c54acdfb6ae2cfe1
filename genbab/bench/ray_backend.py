"""Run jobs as Ray tasks on an existing cluster (``address``) or a local one (``auto``: ``ray.init()``).

Each task runs :func:`genbab.bench.execute.run_job` on a worker, so the worker nodes need genbab
installed in the same environment and the model/property paths readable (a shared file system).
A task reserves ``num_cpus`` / ``num_gpus``; Ray runs as many at once as the cluster has room for.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator

from genbab.bench.errors import BenchError
from genbab.bench.execute import Job, Outcome, run_job


def import_ray():
    """The ``ray`` module, or a BenchError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError("--ray needs the ray package: pip install 'genbab[ray]'") from None
    return ray


def run_ray(items: Iterable[tuple[Hashable, Job]], address: str = "auto", num_cpus: float = 1.0,
            num_gpus: float = 0.0) -> Iterator[tuple[Hashable, Outcome]]:
    """Yield ``(key, outcome)`` as each Ray task finishes. Reuses a Ray session already initialised in
    this process; one started here is shut down at the end."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        try:
            if address == "auto":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except Exception as err:
            raise BenchError(f"cannot start or reach the Ray cluster {address!r}: {err}") from None
        started = True
    remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)(run_job)
    pending = {remote.remote(job): key for key, job in items}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the task or its worker died
                    outcome = Outcome("error", 0.0, message=f"ray task failed: {type(err).__name__}: {err}")
                yield key, outcome
    finally:
        for ref in pending:  # stopped early: the verifiers still end at their own timeout
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
