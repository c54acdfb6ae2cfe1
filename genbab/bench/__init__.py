"""Benchmark suites: ``genbab bench`` runs VNN-COMP benchmark folders instance by instance.

Modules: :mod:`~genbab.bench.instances` (instances.csv / reference.csv), :mod:`~genbab.bench.categories`
(per-category settings), :mod:`~genbab.bench.execute` (one instance in its own process),
:mod:`~genbab.bench.backends` (local worker pool, Ray), :mod:`~genbab.bench.results_csv` (the
competition's results.csv, resuming), :mod:`~genbab.bench.replay` (independent witness check),
:mod:`~genbab.bench.scoring` (correct / wrong, VNN-COMP score), :mod:`~genbab.bench.plot` (cactus
plot), :mod:`~genbab.bench.runner` (ties them together) and :mod:`~genbab.bench.command` (the CLI).
"""
