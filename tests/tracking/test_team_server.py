"""A real team server: Debian's PostgreSQL (its own data directory, loopback only) behind
`mlflow server --app-name basic-auth` with artifact proxying. An unauthenticated client is
refused (401); with credentials, 4 trainings at once, then compare, the registry and predict, all
through the server (artifacts proxied, nothing in a local store), every run FINISHED with every
metric step present."""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.core.distributed import free_port
from tests.conftest import BIN, REAL_ROOT, cli, start_mlflow_server, stop_server

pytestmark = pytest.mark.slow  # a database server, a tracking server, four trainings at once


def pg_tool(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or where Debian's `postgresql` package puts it."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary directory, listening on loopback only; yields the
    SQLAlchemy URI of its `mlflow` database."""
    if pg_tool("initdb") is None:
        pytest.fail("PostgreSQL is not installed: `make test` installs Debian's postgresql")
    # PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="resnet-mnist-pg-"))
    data, port = base / "data", free_port()
    if as_owner:
        shutil.chown(base, "postgres", "postgres")
    base.chmod(0o755)

    def run(*args):
        return subprocess.run(
            [*as_owner, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )

    run(pg_tool("initdb"), "-D", str(data), "--username", "mlflow", "--auth", "trust", "--encoding", "UTF8")
    run(
        pg_tool("pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "server.log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {base}",
        "start",
    )
    try:
        run(pg_tool("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            [*as_owner, pg_tool("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres: str, tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """`mlflow server` on PostgreSQL with MLflow's basic-auth app and proxied artifacts; yields
    its URI and the admin's credentials (as environment variables)."""
    tmp = tmp_path_factory.mktemp("team")
    password = secrets.token_urlsafe(16)
    config = tmp / "basic_auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{tmp / 'basic_auth.db'}\n"
        f"admin_username = admin\nadmin_password = {password}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"  # as docs/scaling.md configures a team server
    )
    port = free_port()
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    server = start_mlflow_server(
        tmp, port, "--app-name", "basic-auth", backend=postgres, env=env, workers=None
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        yield uri, {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    finally:
        stop_server(server)


def test_an_unauthenticated_client_is_refused(team_server, tmp_path: Path) -> None:
    uri, _ = team_server
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert info.value.code == 401
    request = urllib.request.Request(
        f"{uri}/api/2.0/mlflow/registered-models/alias",
        method="POST",
        data=b'{"name": "resnet18-mnist", "alias": "champion", "version": "1"}',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    out = cli("train", "--preset", "smoke", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 1
    assert "requires a login (401 Unauthorized)" in out.stderr and "Traceback" not in out.stderr


SEED_ZERO = "tags.preset = 'smoke' and params.seed = '0'"


@dataclass(frozen=True)
class Team:
    """Where the team's commands ran (their working folder), with what environment (the server
    and the admin's login), and the server's URI."""

    folder: Path
    env: dict[str, str]
    uri: str


@pytest.fixture(scope="module")
def four_trained(team_server, tmp_path_factory) -> Team:
    """Four trainings started at once through the server (both variants, seeds 0 and 1)."""
    uri, login = team_server
    folder = tmp_path_factory.mktemp("team-work")
    env = (
        dict(os.environ)
        | login
        | {"MLFLOW_TRACKING_URI": uri, "RESNET_MNIST_DATA": str(REAL_ROOT), "OMP_NUM_THREADS": "1"}
    )
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    procs = [
        subprocess.Popen(
            [
                str(BIN / "resnet-mnist"),
                "train",
                "--preset",
                "smoke",
                "--use-residual",
                residual,
                "--seed",
                str(seed),
            ],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for residual in ("false", "true")
        for seed in range(2)
    ]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)
    return Team(folder, env, uri)


def test_four_concurrent_trainings_all_finish_with_every_step(four_trained: Team) -> None:
    team = four_trained
    client = MlflowClient(team.uri)
    login = {k: team.env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ.update(login)  # this process reads the store through the server too
    try:
        exp = client.get_experiment_by_name("resnet18-mnist")
        runs = client.search_runs([exp.experiment_id], "tags.run_type = 'train'")
        assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
        # artifacts proxied by the server, nothing written to a local store
        assert all(r.info.artifact_uri.startswith("mlflow-artifacts:") for r in runs)
        assert not (team.folder / "mlflow.db").exists() and not (team.folder / "mlruns").exists()
        for run in runs:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
            assert sorted(steps) == list(range(48)), run.info.run_id
            assert run.data.metrics["test_accuracy"] > 0.5
    finally:
        for key in login:
            os.environ.pop(key, None)


@pytest.fixture(scope="module")
def compared(four_trained: Team) -> subprocess.CompletedProcess[str]:
    """`compare` of the seed-0 pair through the server: scores, comparison run, @champion."""
    team = four_trained
    return subprocess.run(
        [str(BIN / "resnet-mnist"), "compare", "--filter", SEED_ZERO, "--out", "compare"],
        cwd=team.folder, env=team.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_compare_registers_the_champion_through_the_server(compared) -> None:
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "models:/resnet18-mnist@champion is version 1" in compared.stdout


def test_predict_loads_the_champion_through_the_server(four_trained: Team, compared) -> None:
    team = four_trained
    assert compared.returncode == 0, compared.stderr[-3000:]
    predicted = subprocess.run(
        [str(BIN / "resnet-mnist"), "predict", "--mnist-test", "50"],
        cwd=team.folder, env=team.env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    accuracy = float(predicted.stdout.strip().split()[-1])
    assert accuracy > 0.5
    assert not (team.folder / "mlflow.db").exists(), "nothing may go to a local store"
