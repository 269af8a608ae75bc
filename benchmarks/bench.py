"""The benchmark: measured figures, never asserted. Writes a JSON and a Markdown report.

Four measurements, each repeated with min/median/max reported:
  * train-step throughput at 32x32 per batch size, precision and memory format;
  * the book's experiment end to end (both variants, seed preset, tracking on) as `resnet-mnist
    train` processes, start-up included, against the `reference` implementations: a loop written
    like the book (in this process and as a script of its own) and the same experiment written
    with PyTorch Lightning and its MLFlowLogger (as a script of its own, when installed);
  * per-step tracking overhead: the same training with the MLflow callback on and off;
  * optionally, time to accuracy on the full preset (minutes on a CPU, seconds on a GPU);
  * optionally, a whole residual study on Ray (`--study cpu`, see `study.py`): its wall time, Ray's
    start-up and memory, the schedule of its cells, what a cell costs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks import reference as R
from benchmarks.report import markdown
from resnet_mnist.config.settings import TrainConfig, build_config
from resnet_mnist.core import data as D
from resnet_mnist.core.trainer import Callback, Trainer, build_model, load_tensors


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def machine(device: torch.device) -> dict[str, Any]:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_throughput(
    device: torch.device,
    batch_size: int,
    bf16: bool,
    channels_last: bool,
    steps: int,
    repeats: int,
) -> dict[str, Any]:
    """Images/s of the Trainer's own train step on random 1x32x32 inputs (data already on
    device), with the given precision and memory format."""
    config = dataclasses.replace(
        build_config("seed", True),
        precision="bf16" if bf16 else "fp32",
        channels_last="true" if channels_last else "false",
    )
    trainer = Trainer(config, build_model(config, device))
    x = trainer.speed.images(torch.randn(batch_size, 1, 32, 32, device=device))
    y = torch.randint(0, 10, (batch_size,), device=device)
    trainer.train_step(x, y)  # warm-up (allocator, kernels)
    rates = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step(x, y)
        _sync(device)
        rates.append(batch_size * steps / (time.perf_counter() - t0))
    return {
        "batch_size": batch_size,
        "precision": "bf16" if bf16 else "fp32",
        "memory_format": "channels_last" if channels_last else "contiguous",
        "images_per_s": spread(rates),
    }


def _child_env(tracking_uri: str, data_root: str) -> dict[str, str]:
    """The environment of a `resnet-mnist` process the bench starts: its own store, the same
    MNIST files, and none of this process's active run or experiment (`set_experiment` exports
    MLFLOW_EXPERIMENT_ID)."""
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "RESNET_MNIST_DATA": str(Path(data_root or D.default_root()).resolve()),
    }
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env


@dataclasses.dataclass
class TrainProcess:
    """One whole `resnet-mnist train` process as its parent saw it."""

    wall_s: float  #: start to exit
    fit_s: float  #: its run's logged train_time_s + eval_time_s (training at the compute limit)
    stages_s: dict[str, float]  #: seconds per stage (`timeline`), teardown included
    peaks_mib: dict[str, float]  #: peak resident memory at the end of each stage
    peak_mib: float  #: the process's peak resident memory (the highest of its marks)


def cli_train_seconds(
    variant: str,
    workdir: Path,
    data_root: str,
    device: torch.device,
    extra: list[str] | None = None,
) -> TrainProcess:
    """Run one whole `resnet-mnist train` process (start-up and tracking included) with its
    timeline on, and say where its time and memory went."""
    from resnet_mnist.runtime import timeline

    exe = Path(sys.executable).parent / "resnet-mnist"
    marks = workdir / "timeline.json"
    env = _child_env(f"sqlite:///{workdir / 'mlflow.db'}", data_root) | {timeline.ENV: str(marks)}
    start, launched = time.perf_counter(), time.time()
    with open(workdir / "train.log", "w") as log:
        proc = subprocess.Popen(
            [
                str(exe),
                "train",
                "--preset",
                "seed",
                "--use-residual",
                variant,
                "--device",
                device.type,
                *(extra or []),
            ],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.wait()
    wall, ended = time.perf_counter() - start, time.time()
    if proc.returncode != 0:
        tail = (workdir / "train.log").read_text()[-500:]
        raise RuntimeError(f"resnet-mnist train failed ({proc.returncode}): {tail}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("resnet18-mnist")
    assert experiment is not None, "the train process created no experiment"
    run = client.search_runs(
        [experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1
    )[0]
    stages, peaks = timeline.stages(marks, launched, ended)
    return TrainProcess(
        wall,
        run.data.metrics["train_time_s"] + run.data.metrics["eval_time_s"],
        stages,
        peaks,
        max(peaks.values()),
    )


def fit_seconds(
    config: TrainConfig, device: torch.device, callbacks: list[Callback], data_root: str
) -> float:
    tensors = load_tensors(config, device, data_root)
    model = build_model(config, device)
    start = time.perf_counter()
    Trainer(config, model, callbacks).fit(tensors)
    _sync(device)
    return time.perf_counter() - start


def tracking_overhead(
    config: TrainConfig, device: torch.device, repeats: int, data_root: str
) -> dict[str, Any]:
    """Training with the MLflow callback against the same training without it, interleaved."""
    import mlflow

    from resnet_mnist.tracking.logger import MlflowTracker

    with tempfile.TemporaryDirectory() as tmp:
        mlflow.set_tracking_uri(f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        mlflow.set_experiment("bench")
        on, off, inside = [], [], []
        for _ in range(repeats):
            off.append(fit_seconds(config, device, [], data_root))
            with mlflow.start_run() as run:
                tracker = MlflowTracker(run.info.run_id)
                on.append(fit_seconds(config, device, [tracker], data_root))
                inside.append(tracker.log_seconds / on[-1])
    ratios = [a / b for a, b in zip(on, off, strict=True)]
    # The on/off ratio carries the machine's noise; the time spent inside MLflow calls during
    # training, as a share of the tracked training time, is the direct measure.
    return {
        "tracked_s": spread(on),
        "untracked_s": spread(off),
        "ratio": spread(ratios),
        "share_in_mlflow_calls": spread(inside),
    }


class AccuracyClock(Callback):
    """Wall seconds from the start of `fit` (evaluations included) until the evaluated split's
    accuracy first reaches each target."""

    def __init__(self, targets: tuple[float, ...]) -> None:
        self.targets = targets
        self.reached: dict[str, float | None] = {f"{t:.3f}": None for t in targets}
        self.start = time.perf_counter()

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        for target in self.targets:
            key = f"{target:.3f}"
            if self.reached[key] is None and dev_accuracy >= target:
                self.reached[key] = time.perf_counter() - self.start


def time_to_accuracy(device: torch.device, data_root: str) -> dict[str, Any]:
    """Full preset with the test split as the evaluated split: seconds until >= 99.0 / 99.5 %."""
    config = build_config("full", True)
    tensors = load_tensors(config, device, data_root)
    tensors.dev = tensors.test  # the clock watches test accuracy, as the target is stated
    clock = AccuracyClock((0.99, 0.995))
    model = build_model(config, device)
    trainer = Trainer(config, model, [clock])
    clock.start = time.perf_counter()
    result = trainer.fit(tensors)
    return {
        "reached_s": clock.reached,
        "final_test_accuracy": result.test_accuracy,
        "train_time_s": result.train_time_s,
        "epochs": config.epochs,
    }


def book_experiment(
    residual: bool,
    workdir: Path,
    data_root: str,
    device: torch.device,
    quick: bool,
    repeats: int,
    peer: tuple[str, str] | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """One variant of the book's setting, side by side and interleaved: a whole `train` process
    (stage by stage), the book-style loop in this process and as a script of its own, and the
    Lightning peer as a script of its own under the `peer` interpreter (`R.peer_python`, when
    there is one)."""
    config = R.book_config(residual, quick)
    variant = "true" if residual else "false"
    ours: list[TrainProcess] = []
    loops, scripts, peers = [], [], []
    for _ in range(repeats):
        log(f"book setting, use_residual={variant}: resnet-mnist train against the references")
        ours.append(cli_train_seconds(variant, workdir, data_root, device, R.quick_args() if quick else []))
        loops.append(R.book_loop(config, device, workdir, data_root))
        scripts.append(R.as_process("book_loop", residual, workdir, data_root, device, quick))
        if peer:
            peers.append(R.as_process("lightning_peer", residual, workdir, data_root, device, quick, peer[0]))
    walls = [p.wall_s for p in ours]

    def against(refs: list[dict[str, Any]], key: str) -> dict[str, float]:
        return spread([a / r[key] for a, r in zip(walls, refs, strict=True)])

    row = {
        "cli_process_s": spread(walls),
        "cli_train_and_eval_s": spread([p.fit_s for p in ours]),
        "cli_rest_s": spread([p.wall_s - p.fit_s for p in ours]),
        "fixed_cost_s": spread([p.wall_s - p.stages_s["training"] for p in ours]),
        "stages_s": {k: spread([p.stages_s.get(k, 0.0) for p in ours]) for k in ours[0].stages_s},
        "stage_peaks_mib": {k: spread([p.peaks_mib.get(k, 0.0) for p in ours]) for k in ours[0].peaks_mib},
        "peak_mib": spread([p.peak_mib for p in ours]),
        "reference_loop_s": spread([r["seconds"] for r in loops]),
        "ratio": against(loops, "seconds"),
        "reference_process_s": spread([r["process_s"] for r in scripts]),
        "reference_process_peak_mib": spread([r["peak_mib"] for r in scripts]),
        "process_ratio": against(scripts, "process_s"),
        "reference_test_accuracy": loops[-1]["test_accuracy"],
    }
    if peers:
        row |= {
            "peer_process_s": spread([r["process_s"] for r in peers]),
            "peer_peak_mib": spread([r["peak_mib"] for r in peers]),
            "peer_ratio": against(peers, "process_s"),
            "peer_test_accuracy": peers[-1]["test_accuracy"],
        }
    return row


def run(
    out_dir: Path,
    device: torch.device,
    repeats: int = 3,
    quick: bool = False,
    with_time_to_accuracy: bool = False,
    data_root: str = "",
    log: Callable[[str], None] = print,
    study: str | None = None,
    study_workers: int = 2,
) -> dict[str, Any]:
    """Run every measurement and write `bench.json` and `bench.md` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine(device), "date": time.strftime("%Y-%m-%d %H:%M")}
    sizes = [128, 512] if quick else [128, 512, 2048] + ([8192] if device.type == "cuda" else [])
    modes = [(False, False), (False, True)]
    if device.type == "cuda":
        modes += [(True, False), (True, True)]
    report["throughput"] = []
    for batch in sizes:
        steps = 2 if quick else max(2, min(20, 4096 // batch)) if device.type == "cpu" else 50
        for bf16, cl in modes:
            log(
                f"throughput batch {batch} {'bf16' if bf16 else 'fp32'} "
                f"{'channels_last' if cl else 'contiguous'}"
            )
            report["throughput"].append(step_throughput(device, batch, bf16, cl, steps, repeats))

    peer = R.peer_python()
    if peer is None:
        log(f"no Python with PyTorch Lightning: the peer is not measured ({R.PEER_SETUP})")
    with tempfile.TemporaryDirectory() as tmp:
        report["book_experiment"] = {
            variant: book_experiment(
                variant == "true", Path(tmp), data_root, device, quick, repeats, peer, log
            )
            for variant in (("true",) if quick else ("false", "true"))  # quick: the residual only
        }
    report["lightning"] = peer[1] if peer else None

    log("tracking overhead (residual, seed preset)")
    report["tracking_overhead"] = tracking_overhead(R.book_config(True, quick), device, repeats, data_root)
    if with_time_to_accuracy:
        log("time to accuracy (full preset)")
        report["time_to_accuracy"] = time_to_accuracy(device, data_root)
    if study:
        from benchmarks.study import study_timing

        log(f"the {study} study with {study_workers} workers")
        report["study"] = study_timing(study, study_workers, data_root, device.type)
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    (out_dir / "bench.md").write_text(markdown(report))
    return report
