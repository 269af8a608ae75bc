"""A whole `resnet-mnist study` on Ray, measured from outside: its wall time, Ray's start-up, the
memory of Ray's own processes and of the cells' workers (sampled from the command's process
tree), what a cell costs per depth, and the schedule (how many cells ran at once, over time, from
the cells' runs' start and end times)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.bench import spread

SAMPLE_S = 0.5
STARTUP = re.compile(r"connected in ([0-9.]+) s")


def is_cell_worker(proc: psutil.Process) -> bool:
    """Ray names a worker process after what it runs (`ray::train_task`, `ray::IDLE`)."""
    return proc.name().startswith("ray::") or any(a.startswith("ray::") for a in proc.cmdline()[:1])


class MemorySampler(threading.Thread):
    """Peak RSS, every SAMPLE_S, of a command's descendants: Ray's own processes (GCS, raylet,
    log monitor, …) summed, and each cell worker on its own."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.done = threading.Event()
        self.ray_peak = 0
        self.ray_processes = 0
        self.worker_peak = 0

    def run(self) -> None:
        while not self.done.wait(SAMPLE_S):
            ray_rss = ray_count = 0
            try:
                children = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                return
            for proc in children:
                try:
                    rss = proc.memory_info().rss
                    if is_cell_worker(proc):
                        self.worker_peak = max(self.worker_peak, rss)
                    else:
                        ray_rss, ray_count = ray_rss + rss, ray_count + 1
                except psutil.Error:
                    continue
            if ray_rss > self.ray_peak:
                self.ray_peak, self.ray_processes = ray_rss, ray_count


def schedule(spans: list[tuple[float, float]], step_s: float = 60.0) -> dict[str, Any]:
    """Cells running at once: at every `step_s` from the first start, at most, and on average
    (the cells' summed time over the span from the first start to the last end)."""
    first, last = min(s for s, _ in spans), max(e for _, e in spans)
    marks = [first + k * step_s for k in range(int((last - first) // step_s) + 1)]
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    running = peak = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return {
        "span_s": last - first,
        "most_at_once": peak,
        "mean_at_once": sum(e - s for s, e in spans) / max(last - first, 1e-9),
        "every_minute": [sum(s <= t < e for s, e in spans) for t in marks],
    }


def study_timing(name: str, workers: int, data_root: str, device: str) -> dict[str, Any]:
    """`resnet-mnist study --study NAME --workers N` in a temporary store (an embedded Ray)."""
    from mlflow.tracking import MlflowClient

    exe = Path(sys.executable).parent / "resnet-mnist"
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        env |= {"MLFLOW_TRACKING_URI": uri, **({"RESNET_MNIST_DATA": data_root} if data_root else {})}
        command = [str(exe), "study", "--study", name, "--workers", str(workers), "--device", device]
        start = time.perf_counter()
        proc = subprocess.Popen(
            [*command, "--out", str(Path(tmp) / "out")],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        sampler = MemorySampler(proc.pid)
        sampler.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
        if proc.returncode != 0:
            raise RuntimeError(f"resnet-mnist study failed: {err.strip()[-500:]}")
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("resnet-mnist-study")
        runs = client.search_runs([experiment.experiment_id], "tags.run_type = 'train'", max_results=5000)
    per_depth: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        row = per_depth.setdefault(run.data.params["depth"], {"cell_s": [], "train_s": []})
        row["cell_s"].append((run.info.end_time - run.info.start_time) / 1000)
        row["train_s"].append(run.data.metrics["train_time_s"])
    found = STARTUP.search(out)
    return {
        "study": name,
        "workers": workers,
        "command": " ".join(["resnet-mnist", *command[1:]]),
        "wall_s": wall,
        "cells": len(runs),
        "ray_startup_s": float(found.group(1)) if found else None,
        "ray_peak_rss_mb": sampler.ray_peak / 2**20,
        "ray_processes": sampler.ray_processes,
        "worker_peak_rss_mb": sampler.worker_peak / 2**20,
        "schedule": schedule([(r.info.start_time / 1000, r.info.end_time / 1000) for r in runs]),
        "per_depth": {
            d: {k: spread(v) for k, v in row.items()}
            for d, row in sorted(per_depth.items(), key=lambda kv: int(kv[0]))
        },
    }


if __name__ == "__main__":
    # The study stage of `make bench` on its own: `python -m benchmarks.study cpu 2` prints its JSON.
    import json

    print(
        json.dumps(
            study_timing(sys.argv[1], int(sys.argv[2]), os.environ.get("RESNET_MNIST_DATA", ""), "cpu"),
            indent=2,
        )
    )
