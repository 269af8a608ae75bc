"""Shared fixtures and helpers: the real MNIST files, tiny IDX files, a temporary MLflow store, the
CLI as a subprocess, and a real `mlflow server`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# One intra-op thread in every test process and every process a test starts: `make test` runs
# the tests on two xdist workers, and two processes each spinning two OpenMP threads on two
# cores wait on each other (measured: the suite's CPU time doubled). Set before torch loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The test processes load torch and MLflow and train in-process too: the collector as every
# `resnet-mnist` process sets it (runtime/collector.py), before those imports.
from resnet_mnist.runtime.collector import for_heavy_imports  # noqa: E402

for_heavy_imports()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from resnet_mnist.core import data as D  # noqa: E402
from resnet_mnist.tracking.offline import RETRY_BOUND  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = Path(os.environ.get("RESNET_MNIST_DATA", REPO / "data")).resolve()
BIN = Path(sys.executable).parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep what shares a module-scoped fixture on one xdist worker, and start the slow modules
    first.

    `make test` runs the suite on several workers (`--dist loadgroup`): a test whose module sets
    up a server or a trained store once joins that module's group, so the set-up happens once,
    on one worker; every other test is scheduled alone. Modules with slow tests go first (a
    module stays together), so that no long test is left to start when the others are done.
    Tests that start Ray (marked `ray`) share one group: two Ray instances starting at once on one
    machine failed CI (a study and `ray start` ended at start-up beside another worker's Ray).
    """
    for item in items:
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures else []
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif any(d[-1].scope == "module" for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    slow_modules = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_modules)


def real_data_present() -> bool:
    return all((D.raw_dir(REAL_ROOT) / name).is_file() for name in D.SHA256)


needs_data = pytest.mark.skipif(
    not real_data_present(), reason="MNIST not fetched (run `resnet-mnist data fetch`)"
)


@pytest.fixture(autouse=True)
def _retry_bound_stays_in_its_test():
    """An in-process test against a server sets MLflow's HTTP retry bound in os.environ
    (`store.configure`); later tests' subprocesses must not inherit it as a user's own setting."""
    saved = {key: os.environ.get(key) for key in RETRY_BOUND}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def real_root() -> Path:
    if not real_data_present():
        pytest.skip("MNIST not fetched (run `resnet-mnist data fetch`)")
    return REAL_ROOT


@pytest.fixture(scope="session")
def mnist(real_root: Path) -> D.Mnist:
    return D.load(real_root)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as an IDX file (magic 0x0000080N, big-endian dimensions)."""
    header = struct.pack(">I", 0x0800 + array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def tiny_files(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Four tiny IDX files (60 train, 12 test images) with SHA256 patched to match them."""
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (60, 28, 28))),
        "train-labels-idx1-ubyte": idx_bytes(np.arange(60) % 10),
        "t10k-images-idx3-ubyte": idx_bytes(rng.integers(0, 256, (12, 28, 28))),
        "t10k-labels-idx1-ubyte": idx_bytes(np.arange(12) % 10),
    }
    monkeypatch.setattr(D, "SHA256", {k: hashlib.sha256(v).hexdigest() for k, v in files.items()})
    return files


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a new, empty MLflow sqlite store, made once per session: creating one
    runs MLflow's schema migrations (1 to 4 s here), a copy (`copy_store`) takes milliseconds.
    Tests of store creation itself (the first-time lock, a damaged file) make their own."""

    def build(home: Path) -> None:
        from mlflow.tracking import MlflowClient

        with contextlib.chdir(home):  # the Default experiment's artifacts: ./mlruns, as a user's
            MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_experiments(max_results=1)

    return built_once(tmp_path_factory, "empty-store", build)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_store: Path) -> str:
    """A real MLflow sqlite store (artifacts in ./mlruns) in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    uri = copy_store(empty_store, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("RESNET_MNIST_DATA", str(REAL_ROOT))
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture
def own_threads() -> Iterator[None]:
    """A study cell or a tune trial sets this process's torch threads to its own; put them back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """A user's environment for a command a test starts: the real MNIST files, and none of the
    in-process tests' active run or experiment (`mlflow.set_experiment` exports
    MLFLOW_EXPERIMENT_ID)."""
    full_env = os.environ.copy() | {"RESNET_MNIST_DATA": str(REAL_ROOT)} | (env or {})
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        full_env.pop(key, None)
    return full_env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run the installed `resnet-mnist` console script as a user would."""
    return subprocess.run(
        [str(BIN / "resnet-mnist"), *args],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mlflow_run_entry(
    tmp_path: Path, uri: str, entry: str, *params: str, experiment: str
) -> subprocess.CompletedProcess[str]:
    """`mlflow run -e ENTRY` of this project in the local environment."""
    env = os.environ.copy() | {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    args = [a for p in params for a in ("-P", p)]
    return subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "-e",
            entry,
            "--env-manager",
            "local",
            "--experiment-name",
            experiment,
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def run_python(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run this environment's Python (`python -m …`) as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout
    )


def built_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that `build` fills once per test session, whichever xdist worker asks first (the
    others wait on a file lock, then find it built). Tests only read it: one that writes makes
    its own store."""
    base = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this session
    home = base / name
    with FileLock(str(base / f"{name}.lock")):
        if not (home / ".built").exists():
            shutil.rmtree(home, ignore_errors=True)
            home.mkdir()
            build(home)
            (home / ".built").touch()
    return home


@dataclass(frozen=True)
class Champion:
    """The shared store: `compare --preset tests/presets/reader.yaml --train-missing` trained both
    variants and registered the winner as models:/resnet18-mnist@champion."""

    home: Path
    uri: str
    compared: str  #: what compare printed

    @property
    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.uri}


@pytest.fixture(scope="session")
def champion(tmp_path_factory: pytest.TempPathFactory, real_root: Path) -> Champion:
    """One trained store for the serve, pad, UI and predict suites, read-only."""

    def build(home: Path) -> None:
        uri = f"sqlite:///{home / 'mlflow.db'}"
        preset = REPO / "tests" / "presets" / "reader.yaml"
        out = cli(
            "compare", "--preset", str(preset), "--train-missing", cwd=home, env={"MLFLOW_TRACKING_URI": uri}
        )
        assert out.returncode == 0, out.stderr[-3000:]
        (home / "compare.out").write_text(out.stdout)

    home = built_once(tmp_path_factory, "champion", build)
    return Champion(home, f"sqlite:///{home / 'mlflow.db'}", (home / "compare.out").read_text())


@dataclass(frozen=True)
class TunedStudy:
    """The tiny tuned study as `mlflow run . -e study -P study=tiny-tuned -P workers=2` left it
    (the project's run is the study run): both variants searched (2 trials each), their 2 seeds
    trained at the choice, the report logged."""

    home: Path
    uri: str
    printed: str  #: what the command printed


@pytest.fixture(scope="session")
def tuned_study(tmp_path_factory: pytest.TempPathFactory, real_root: Path, empty_store: Path) -> TunedStudy:
    """Built once per session, read only. It starts Ray, so only tests marked `ray` (which share
    one xdist worker: tests/conftest.py) may ask for it."""

    def build(home: Path) -> None:
        uri = copy_store(empty_store, home)
        params = ("study=tiny-tuned", "workers=2")
        out = mlflow_run_entry(home, uri, "study", *params, experiment="resnet-mnist-study")
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        (home / "study.out").write_text(out.stdout)

    home = built_once(tmp_path_factory, "tuned-study", build)
    return TunedStudy(home, f"sqlite:///{home / 'mlflow.db'}", (home / "study.out").read_text())


def copy_store(template: Path, dest: Path) -> str:
    """A writable copy of the store in `template` (its sqlite file, artifacts and reports) in
    `dest`; returns its URI. MLflow records artifact locations as absolute paths, in the
    database and in each model's MLmodel file: they are moved to `dest`, so that nothing the
    copy's tests write reaches the template.

    A copy keeps the template's run ids, and MLflow caches each run's artifact store by run id
    alone, for the whole process: a process that had written the template's runs (or used
    another copy) would write the copy's artifacts there. Templates are therefore built in
    processes of their own, and the cache is emptied here for a test process that uses a copy.
    """
    shutil.copytree(template, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".built", "*.lock"))
    old, new = f"{template}/", f"{dest}/"
    with contextlib.closing(sqlite3.connect(dest / "mlflow.db")) as db, db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in db.execute(f'PRAGMA table_info("{table}")'):
                if column[2].upper().startswith(("VARCHAR", "TEXT")):
                    db.execute(
                        f'UPDATE "{table}" SET "{column[1]}" = replace("{column[1]}", ?, ?) '
                        f'WHERE instr("{column[1]}", ?) > 0',
                        (old, new, old),
                    )
    for mlmodel in (dest / "mlruns").rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text().replace(old, new))
    from mlflow.tracking._tracking_service import utils as tracking_utils

    tracking_utils._artifact_repos_cache.clear()
    return f"sqlite:///{dest / 'mlflow.db'}"


#: Both variants of the smoke preset trained in one process (one start-up instead of two).
TRAIN_SMOKE_PAIR = """
from resnet_mnist.config.settings import build_config
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import train
for residual in (False, True):
    train(RunRequest(build_config("smoke", residual), experiment="resnet18-mnist"))
"""


@pytest.fixture(scope="session")
def smoke_pair(tmp_path_factory: pytest.TempPathFactory, real_root: Path, empty_store: Path) -> Path:
    """A store with one smoke run of each variant in experiment resnet18-mnist, trained once per
    session in a process of its own (never in a test process: see `copy_store`). Tests use
    `copy_store` on it, never the folder itself."""

    def build(home: Path) -> None:
        uri = copy_store(empty_store, home)
        out = run_python("-c", TRAIN_SMOKE_PAIR, cwd=home, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 0, out.stderr[-3000:]

    return built_once(tmp_path_factory, "smoke-pair", build)


@pytest.fixture(scope="session")
def smoke_compared(tmp_path_factory: pytest.TempPathFactory, smoke_pair: Path) -> Path:
    """`smoke_pair` after `resnet-mnist compare --preset smoke`: both runs scored on the full
    splits, the winner registered as version 1 of the champion; built once per session."""

    def build(home: Path) -> None:
        uri = copy_store(smoke_pair, home)
        out = cli("compare", "--preset", "smoke", cwd=home, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 0, out.stderr[-3000:]

    return built_once(tmp_path_factory, "smoke-compared", build)


def two_cell_study(folder: Path) -> Path:
    """The tiny study cut to one rate and one seed: one cell per variant, for tests whose point is
    how a study is started and recorded, not its search (tests/study/test_study.py runs all 6)."""
    path = folder / "two-cells.yaml"
    path.write_text("preset: study-tiny\ndepths: [8]\nseeds: [0]\nlrs: [0.02]\nresources: {cpus: 1}\n")
    return path


#: The metrics a resumed or taken-over run must repeat exactly (CPU), step by step, and the ones
#: whose steps alone must match (their values are timings).
SAME_VALUES = ("train_loss", "dev_accuracy", "dev_loss", "train_epoch_loss", "best_step")
SAME_STEPS = ("train_time_s", "tracking_log_seconds")
FINAL = ("best_dev_accuracy", "best_step", "test_accuracy", "test_loss")


def histories(uri: str, run_id: str) -> dict:
    """A run's histories as `SAME_VALUES`/`SAME_STEPS` compare them, and its `FINAL` metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return {
        "values": {
            k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in SAME_VALUES
        },
        "steps": {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in SAME_STEPS},
        "final": {k: client.get_run(run_id).data.metrics[k] for k in FINAL},
    }


@pytest.fixture(scope="session")
def smoke_reference(smoke_pair: Path) -> dict:
    """The histories that every stopped, resumed or taken-over smoke run must end with
    (`histories`): those of `smoke_pair`'s residual run, trained uninterrupted with the settings
    of `resnet-mnist train --preset smoke` (which gives the same numbers to the last digit,
    checked on 2026-12-07), so the session trains that run once, not twice. Read only."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{smoke_pair / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("resnet18-mnist")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], "tags.variant = 'residual'")
    return histories(uri, run.info.run_id)


#: MLflow's job execution off, as the Makefile's servers run (see NO_JOBS there).
NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_mlflow_server(
    tmp: Path,
    port: int,
    *args: str,
    backend: str | None = None,
    env: dict[str, str] | None = None,
    workers: int | None = 1,
) -> subprocess.Popen:
    """`mlflow server` on loopback: the backend (sqlite in `tmp` unless given), artifacts proxied
    into `tmp/server-artifacts`, one worker unless `workers` says otherwise (None: MLflow's
    default), `args` appended, its output appended to `tmp/server.log`. It
    runs in a process group of its own, so that it can be stopped or killed whole. Returns once
    /health answers; fails the test with the log's tail if it exits or does not answer in 120 s."""
    # As `make server` runs it: without MLflow's job runner and its four huey consumers.
    server_env = child_env(env) | {"PATH": f"{BIN}:{os.environ['PATH']}", **NO_JOBS}
    server_env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp / "server.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--backend-store-uri",
                backend or f"sqlite:///{tmp / 'server.db'}",
                "--artifacts-destination",
                str(tmp / "server-artifacts"),
                *(["--workers", str(workers)] if workers else []),
                *args,
            ],
            cwd=tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=server_env,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc, signal.SIGKILL)
    pytest.fail(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace_s: float = 30) -> None:
    """Send `sig` to the server's whole process group (its job consumers outlive the leader by a
    few seconds) and wait until the group is gone; SIGKILL after `grace_s` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# Debian's chromium, as the browser tests launch it (browser downloads by test tools are blocked).
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
