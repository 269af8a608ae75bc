"""REST serving: the registered champion behind MLflow's own scoring server, asked over HTTP.

The shared store's champion (`resnet-mnist compare --train-missing`, tests/conftest.py), then
`mlflow models serve -m models:/resnet18-mnist@champion --env-manager local` (what `make serve`
runs) on a free loopback port, then real requests to POST /invocations with urllib.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from PIL import Image

from resnet_mnist.core import data as D
from resnet_mnist.core.distributed import free_port
from tests.conftest import BIN, Champion, cli

pytestmark = pytest.mark.slow  # real processes and a real server

MODEL_URI = "models:/resnet18-mnist@champion"
BATCH = 8  # the first BATCH official test digits
READY_TIMEOUT_S = 120
# Loopback only, and never through a proxy that the environment may name.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(
    url: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, str, str]:
    """GET (no body) or POST; returns (status, content type, body text), also for 4xx/5xx."""
    headers = {"Content-Type": content_type} if body is not None else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="GET" if body is None else "POST")
    try:
        with OPENER.open(req, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def invoke(url: str, payload: object) -> tuple[int, dict]:
    status, _, text = request(f"{url}/invocations", json.dumps(payload).encode())
    return status, json.loads(text)


def predictions(url: str, payload: object) -> np.ndarray:
    status, body = invoke(url, payload)
    assert status == 200, body
    assert list(body) == ["predictions"], body
    return np.asarray(body["predictions"], dtype=np.float64)


def stop(proc: subprocess.Popen) -> None:
    """End the server's whole process group (mlflow and the uvicorn it started)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:  # whatever is left of the group (uvicorn outliving mlflow, or a hung shutdown)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def digits(
    champion: Champion, mnist: D.Mnist, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, np.ndarray]:
    """The first BATCH test digits, their labels, and what `resnet-mnist predict` says of them."""
    images, labels = mnist.test_images[:BATCH].copy(), mnist.test_labels[:BATCH].copy()
    folder = tmp_path_factory.mktemp("digits")
    paths = [folder / f"digit{i}.png" for i in range(BATCH)]
    for path, image in zip(paths, images, strict=True):
        Image.fromarray(image).save(path)
    out = cli(
        "predict",
        *map(str, paths),
        "--model-uri",
        MODEL_URI,
        "--format",
        "json",
        cwd=folder,
        env=champion.env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    said = {r["path"]: (r["digit"], r["probability"]) for r in json.loads(out.stdout)}
    assert set(said) == set(map(str, paths)), out.stdout
    return {
        "images": images,
        "labels": labels,
        "cli_digits": np.array([said[str(p)][0] for p in paths]),
        "cli_probs": np.array([said[str(p)][1] for p in paths]),
    }


def start_server(home: Path, uri: str) -> tuple[subprocess.Popen, str, Path]:
    """`make serve` on a free port; returns once GET /ping answers 200 from our own process."""
    port = free_port()
    log_path = home / f"serve-{port}.log"
    env = os.environ.copy() | {
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                MODEL_URI,
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return proc, "", log_path  # exited: the caller reads the log
            try:
                status, _, _ = request(f"{url}/ping")
            except OSError:
                status = 0
            # Only our uvicorn prints this after binding the port: a 200 from a stranger that took
            # the port first does not count.
            ours = f"Uvicorn running on {url}" in log_path.read_text(errors="replace")
            if status == 200 and ours:
                return proc, url, log_path
            time.sleep(0.5)
    except BaseException:
        stop(proc)
        raise
    stop(proc)
    pytest.fail(
        f"mlflow models serve did not answer /ping within {READY_TIMEOUT_S} s:\n"
        + log_path.read_text(errors="replace")[-3000:]
    )


@pytest.fixture(scope="module")
def server(champion: Champion, tmp_path_factory: pytest.TempPathFactory):
    """The scoring server's base URL; its process group is always ended afterwards."""
    home = tmp_path_factory.mktemp("serve")
    for _ in range(3):  # another process may take the free port before uvicorn binds it
        proc, url, log_path = start_server(home, champion.uri)
        if url:
            break
        stop(proc)
        log = log_path.read_text(errors="replace")
        if "address already in use" not in log:
            pytest.fail(f"mlflow models serve exited with {proc.returncode}:\n{log[-3000:]}")
    else:
        pytest.fail("mlflow models serve found its port taken three times")
    try:
        yield url
    finally:
        stop(proc)


def test_ping_and_version(server: str) -> None:
    assert request(f"{server}/ping")[0] == 200
    assert request(f"{server}/version")[2] == mlflow.__version__


@pytest.mark.parametrize("count", [1, BATCH], ids=["one", "batch"])
@pytest.mark.parametrize("dtype", ["uint8", "float"])
@pytest.mark.parametrize("key", ["inputs", "instances"])
def test_predictions_match_the_cli(
    server: str, digits: dict[str, np.ndarray], key: str, dtype: str, count: int
) -> None:
    images = digits["images"][:count]
    # JSON has no dtype: floats 0.0-255.0 are what a client with float images sends.
    values = images.tolist() if dtype == "uint8" else images.astype(np.float64).tolist()
    assert all(isinstance(v, float if dtype == "float" else int) for v in values[0][0])
    probs = predictions(server, {key: values})
    assert probs.shape == (count, 10)
    assert np.all(probs >= 0) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert np.array_equal(probs.argmax(axis=1), digits["cli_digits"][:count])
    # batch size changes the last float bits
    assert np.allclose(probs.max(axis=1), digits["cli_probs"][:count], atol=1e-4)
    assert (probs.argmax(axis=1) == digits["labels"][:count]).sum() >= 0.75 * count


def test_the_payload_predict_prints_is_what_the_server_takes(
    server: str, champion: Champion, mnist: D.Mnist, tmp_path: Path
) -> None:
    """A person's photos (ink on paper, JPEG) become the server's 28x28 input through
    `predict --payload`, and the server then answers what `predict` says of the same files."""
    from resnet_mnist.core.presentations import by_name, rendered

    (photo,) = by_name(["photo-256"])
    paths = []
    for i, data in enumerate(rendered(photo, mnist.test_images[:BATCH])):
        paths.append(tmp_path / f"photo{i}.jpg")
        paths[-1].write_bytes(data)
    env = champion.env
    payload = cli("predict", "--payload", *map(str, paths), cwd=tmp_path, env=env)
    assert payload.returncode == 0, payload.stderr[-3000:]
    body = json.loads(payload.stdout)
    assert np.asarray(body["inputs"]).shape == (BATCH, 28, 28)
    said = cli(
        "predict", *map(str, paths), "--model-uri", MODEL_URI, "--format", "json", cwd=tmp_path, env=env
    )
    assert said.returncode == 0, said.stderr[-3000:]
    digits = [r["digit"] for r in json.loads(said.stdout)]
    assert predictions(server, body).argmax(axis=1).tolist() == digits


def test_a_larger_batch_is_mostly_right(server: str, mnist: D.Mnist) -> None:
    probs = predictions(server, {"inputs": mnist.test_images[:100].tolist()})
    assert probs.shape == (100, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert (probs.argmax(axis=1) == mnist.test_labels[:100]).mean() > 0.6


def test_floats_are_cast_to_the_uint8_signature(server: str, digits: dict[str, np.ndarray]) -> None:
    """The server casts JSON numbers to the signature's uint8 (numpy, truncating): whole floats
    give exactly the uint8 answer, fractions are dropped, and floats scaled to [0, 1] are accepted
    but become an (almost) black image. Out of range is refused."""
    images = digits["images"]
    as_uint8 = predictions(server, {"inputs": images.tolist()})
    assert np.array_equal(predictions(server, {"inputs": images.astype(np.float64).tolist()}), as_uint8)
    assert np.array_equal(predictions(server, {"inputs": (images + 0.9).tolist()}), as_uint8)
    scaled = predictions(server, {"inputs": (images / 255.0).tolist()})
    black = predictions(server, {"inputs": (images == 255).astype(np.uint8).tolist()})
    assert np.array_equal(scaled, black)
    status, body = invoke(server, {"inputs": np.where(images > 0, 256.0, 0.0).tolist()})
    assert status == 400 and "256 out of bounds for uint8" in body["message"]


def malformed(images: np.ndarray) -> dict[str, tuple[bytes, str, int, str]]:
    """name -> (body, content type, the status MLflow 3.17 answers, a phrase of its message)."""

    def js(payload: object) -> bytes:
        return json.dumps(payload).encode()

    expected_shape = "does not match expected shape (-1, 28, 28)"
    return {
        "wrong key": (
            js({"images": images.tolist()}),
            "application/json",
            400,
            "exactly one of the input fields",
        ),
        "both keys": (
            js({"inputs": images.tolist(), "instances": images.tolist()}),
            "application/json",
            400,
            "exactly one of the input fields",
        ),
        "bare list": (js(images.tolist()), "application/json", 400, "must be a JSON dictionary"),
        "not json": (b"this is not json", "application/json", 400, "valid JSON"),
        "shape (2, 5)": (
            js({"inputs": np.zeros((2, 5), np.uint8).tolist()}),
            "application/json",
            400,
            f"Shape of input (2, 5) {expected_shape}",
        ),
        "one digit without batch axis": (
            js({"inputs": images[0].tolist()}),
            "application/json",
            400,
            f"Shape of input (28, 28) {expected_shape}",
        ),
        "value 256": (
            js({"inputs": (images.astype(int) + 1).tolist()}),
            "application/json",
            400,
            "256 out of bounds for uint8",
        ),
        "negative": (
            js({"instances": (images.astype(int) - 1).tolist()}),
            "application/json",
            400,
            "-1 out of bounds for uint8",
        ),
        "text/plain": (
            js({"inputs": images.tolist()}),
            "text/plain",
            415,
            "only supports the following content types",
        ),
    }


@pytest.mark.parametrize("case", list(malformed(np.zeros((1, 28, 28), np.uint8))))
def test_malformed_requests_get_a_4xx_with_a_message(
    server: str, digits: dict[str, np.ndarray], case: str
) -> None:
    images = digits["images"][:2].copy()
    images[:, 0, 0] = 255  # so that +1 leaves the uint8 range
    images[:, 0, 1] = 0  # and -1 does too
    body, content_type, status, phrase = malformed(images)[case]
    got, got_type, text = request(f"{server}/invocations", body, content_type)
    assert 400 <= got < 500, text
    assert got == status, text
    if got_type.startswith("application/json"):
        answer = json.loads(text)
        assert answer["error_code"] in {"BAD_REQUEST", "INVALID_PARAMETER_VALUE"}
        text = answer["message"]
    assert phrase in text
    # The server still answers after a bad request.
    assert request(f"{server}/ping")[0] == 200
