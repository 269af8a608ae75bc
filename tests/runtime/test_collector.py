"""The collector's setting for processes that load torch and MLflow."""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from resnet_mnist.runtime.collector import YOUNG, for_heavy_imports


def test_the_young_generation_waits_for_more_allocations_and_the_older_ratios_stay() -> None:
    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        for_heavy_imports()
        assert gc.get_threshold() == (YOUNG, 10, 10)
        for_heavy_imports()  # idempotent
        assert gc.get_threshold() == (YOUNG, 10, 10)
        assert gc.isenabled()
    finally:
        gc.set_threshold(*saved)


@pytest.mark.slow  # two interpreters of its own
def test_importing_torch_and_mlflow_after_it_runs_no_full_collection() -> None:
    """What it is for, in a fresh interpreter: CPython's defaults run several full collections
    while these libraries load; after `for_heavy_imports` none (the young ones still run)."""
    script = """
import gc, json, sys
from resnet_mnist.runtime.collector import for_heavy_imports
if sys.argv[1] == "set":
    for_heavy_imports()
full = []
gc.callbacks.append(lambda phase, info: phase == "stop" and info["generation"] == 2 and full.append(1))
import torch, mlflow  # noqa: F401
print(json.dumps(len(full)))
"""
    counts = {
        how: json.loads(
            subprocess.run(
                [sys.executable, "-c", script, how], capture_output=True, text=True, check=True
            ).stdout
        )
        for how in ("default", "set")
    }
    assert counts["default"] >= 1 and counts["set"] == 0, counts
