"""Shared fixtures and helpers: the real MNIST files, tiny IDX files, a temporary MLflow store, the
CLI as a subprocess, and a real `mlflow server`."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from resnet_mnist.core import data as D
from resnet_mnist.tracking.offline import RETRY_BOUND

REPO = Path(__file__).resolve().parents[1]
REAL_ROOT = Path(os.environ.get("RESNET_MNIST_DATA", REPO / "data")).resolve()
BIN = Path(sys.executable).parent


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


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A real MLflow sqlite store (artifacts in ./mlruns) in a fresh working directory."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.setenv("RESNET_MNIST_DATA", str(REAL_ROOT))
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


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


def run_python(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run this environment's Python (`python -m …`) as a user would."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=child_env(env), capture_output=True, text=True, timeout=timeout
    )


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
    server_env = child_env(env) | {"PATH": f"{BIN}:{os.environ['PATH']}"}
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
