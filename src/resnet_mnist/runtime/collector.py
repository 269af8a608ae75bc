"""Python's cyclic garbage collector, set for a process that loads torch, MLflow and their kin.

Those libraries leave about 600,000 long-lived objects. With CPython's default thresholds (700,
10, 10) the collector ran nine full collections in a smoke `train` process, seven of them while
the libraries were imported, each walking every object and freeing next to nothing: 1.5 s of a
10 s process here. With a first generation of 100,000 allocations a full collection is rare (none
in that process), while young cyclic garbage is still collected (11 times): whole processes took
9.33 s instead of 10.44 s (medians of 3, docs/performance.md).
"""

from __future__ import annotations

import gc

#: Allocations (net of frees) between two collections of the youngest generation.
YOUNG = 100_000


def for_heavy_imports() -> None:
    """Collect the youngest generation every `YOUNG` allocations instead of every 700; the older
    generations' ratios stay CPython's. Idempotent; call it before the heavy imports."""
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG, middle, old)
