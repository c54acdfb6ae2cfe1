"""The one error ``genbab bench`` reports as a plain message (bad folder, missing optional package)."""


class BenchError(Exception):
    """A problem with the benchmark run's inputs or environment; ``str(err)`` is one readable line."""
