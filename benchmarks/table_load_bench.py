"""Prints how long each branching-point lookup table takes to load (cold cache), and all of them."""

from __future__ import annotations

import time

from genbab.bab import branch_points as bp


def main() -> None:
    total = 0.0
    for key in bp.available_tables():
        bp.clear_cache()
        start = time.perf_counter()
        bp.load_table(key)
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{key:20s} {seconds * 1000:8.1f} ms")
    bp.clear_cache()
    start = time.perf_counter()
    bp.load_all()
    print(f"{'load_all':20s} {(time.perf_counter() - start) * 1000:8.1f} ms (sum of singles {total * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
