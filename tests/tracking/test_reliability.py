"""Reliability, for real: signals to subprocesses, resume, concurrent writers, a tracking server,
refused pickles, and bad input that never leaves a RUNNING run."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.core.distributed import free_port
from tests.conftest import (
    BIN,
    FINAL,
    REAL_ROOT,
    cli,
    copy_store,
    histories,
    start_mlflow_server,
    stop_server,
)

pytestmark = pytest.mark.slow  # real processes


def env_for(uri: str) -> dict[str, str]:
    env = os.environ.copy() | {
        "MLFLOW_TRACKING_URI": uri,
        "RESNET_MNIST_DATA": str(REAL_ROOT),
        "PYTHONUNBUFFERED": "1",
    }
    for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(key, None)
    return env


def runs(uri: str, experiment: str = "resnet18-mnist") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def start_train(tmp: Path, uri: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "resnet-mnist"), "train", "--preset", "smoke", *args],
        cwd=tmp,
        env=env_for(uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_after(proc: subprocess.Popen, marker: str, sig: int) -> tuple[int, str, str]:
    """Send `sig` once the process has printed `marker`, then wait for it."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


def test_sigterm_then_resume_equals_uninterrupted(
    tmp_path: Path, empty_store: Path, smoke_reference: dict
) -> None:
    uri = copy_store(empty_store, tmp_path)
    code, _, err = stop_after(start_train(tmp_path, uri), "step: 16/48", signal.SIGTERM)
    assert code == 130 and "KILLED" in err and "--resume" in err
    (killed,) = runs(uri)
    assert killed.info.status == "KILLED"
    stopped = int(killed.data.tags["stopped_at_step"])
    assert 17 <= stopped < 48
    client = MlflowClient(uri)
    assert "checkpoints/resume.pt" in {
        a.path for a in client.list_artifacts(killed.info.run_id, "checkpoints")
    }
    logged = [m.step for m in client.get_metric_history(killed.info.run_id, "train_loss")]
    assert logged == list(range(stopped))

    resumed = cli("train", "--resume", killed.info.run_id, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert resumed.returncode == 0, resumed.stderr
    done = client.get_run(killed.info.run_id)
    assert done.info.status == "FINISHED"
    assert done.data.tags["resumed_from_step"] == str(stopped)
    assert_same_histories(uri, done.info.run_id, smoke_reference)


def test_resume_refusals(tmp_path: Path, smoke_pair: Path) -> None:
    uri = copy_store(smoke_pair, tmp_path)  # two FINISHED smoke runs
    env = {"MLFLOW_TRACKING_URI": uri}
    finished = runs(uri)[0]
    out = cli("train", "--resume", finished.info.run_id, cwd=tmp_path, env=env)
    assert out.returncode == 1 and "already FINISHED" in out.stderr
    out = cli("train", "--resume", "0123456789abcdef", cwd=tmp_path, env=env)
    assert out.returncode == 1 and "no run '0123456789abcdef'" in out.stderr

    # A KILLED run whose resume checkpoint was replaced by a pickle that runs code when loaded.
    client = MlflowClient(uri)
    victim = client.create_run(finished.info.experiment_id)
    for key, value in finished.data.params.items():
        client.log_param(victim.info.run_id, key, value)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "resume.pt"
    evil.write_bytes(pickle.dumps({"format": Exploit()}))
    client.log_artifact(victim.info.run_id, str(evil), "checkpoints")
    client.set_terminated(victim.info.run_id, "KILLED")
    out = cli("train", "--resume", victim.info.run_id, cwd=tmp_path, env=env)
    assert out.returncode == 1 and "refused checkpoints/resume.pt" in out.stderr
    assert not marker.exists()
    assert client.get_run(victim.info.run_id).info.status == "KILLED"


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Four trainings of 16 steps write one store at once; each also checkpoints periodically,
    seed 3 every 5 steps (its last resumable step is 15), the others every 4 (16)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    every = {0: 4, 1: 4, 2: 4, 3: 5}
    procs = [
        start_train(tmp_path, uri, "--epochs", "1", "--seed", str(seed), "--checkpoint-every", str(n))
        for seed, n in every.items()
    ]
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-1500:] for _, err in results]
    finished = runs(uri)
    assert len(finished) == 4 and {r.info.status for r in finished} == {"FINISHED"}
    client = MlflowClient(uri)
    for run in finished:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert steps == list(range(16))
        assert [m.step for m in client.get_metric_history(run.info.run_id, "dev_accuracy")] == [8, 15]
        assert set(FINAL) <= set(run.data.metrics)
        n = every[int(run.data.params["seed"])]
        assert run.data.tags["resume_step"] == str(16 // n * n)


def test_unreachable_tracking_server_fails_fast(tmp_path: Path) -> None:
    # A port bound but never listened on refuses every connection, and no other process can take
    # it while the test runs (a merely "free" port can be taken by any server started meanwhile).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        out = cli(
            "train",
            "--preset",
            "smoke",
            cwd=tmp_path,
            env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
        )
    assert out.returncode == 1 and "does not answer" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
def test_bad_input_never_leaves_a_run(
    tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Settings refused before training (usage errors, exit 2: in this process, as the CLI's
    own parsing), and what only the run can find (exit 1: in processes of their own, with the
    command's real exit path): neither leaves a run behind."""
    import torch
    from typer.testing import CliRunner

    from resnet_mnist.cli.app import app

    uri = copy_store(empty_store, tmp_path)
    env = {"MLFLOW_TRACKING_URI": uri}
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("lr: [0.1\n")
    extra_key = tmp_path / "extra.yaml"
    extra_key.write_text("lr: 0.1\nbatchsize: 3\n")
    refused = [
        (["--preset", str(bad_yaml)], "not valid YAML"),
        (["--preset", str(extra_key)], "unknown keys batchsize"),
        (["--preset", "smoke", "--lr", "inf"], "lr=inf must be a finite number > 0"),
        (["--preset", "smoke", "--epochs", "0"], "epochs=0 must be >= 1"),
        (["--preset", "smoke", "--eval-steps", "-1"], "eval_steps=-1 must be >= 0"),
        (["--preset", "smoke", "--device", "tpu"], "tpu"),
    ]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for args, message in refused:
        result = CliRunner().invoke(app, ["train", *args], terminal_width=300)
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.replace("│", " ").split()), (args, result.output)
    failing = [(["--preset", "smoke", "--root", str(tmp_path / "nodata")], "resnet-mnist data fetch")]
    if not torch.cuda.is_available():
        failing.append((["--preset", "smoke", "--device", "cuda"], "no CUDA GPU is available"))
    for args, message in failing:
        out = cli("train", *args, cwd=tmp_path, env=env)
        assert out.returncode == 1, (args, out.stderr)
        assert message in " ".join((out.stderr + out.stdout).split()), (args, out.stderr)
    assert runs(uri) == []


def test_non_finite_loss_through_cli(tmp_path: Path, empty_store: Path) -> None:
    uri = copy_store(empty_store, tmp_path)
    out = cli("train", "--preset", "smoke", "--lr", "1e30", cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 1 and "non-finite training loss" in out.stderr
    (run,) = runs(uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "NonFiniteLossError"
    assert int(run.data.tags["failed_at_step"]) >= 0


def test_state_dicts_load_weights_only(tmp_path: Path) -> None:
    """The best checkpoint is plain tensors: it loads with weights_only=True, a pickle does not."""
    import torch

    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(2)}, good)
    assert torch.equal(torch.load(good, weights_only=True)["w"], torch.zeros(2))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"w": np.zeros(2, dtype=object)}))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(bad, weights_only=True)


def test_kill_9_then_stale_then_one_of_two_resumes_takes_over(tmp_path: Path, empty_store: Path) -> None:
    uri = copy_store(empty_store, tmp_path)
    env = {"MLFLOW_TRACKING_URI": uri}
    proc = start_train(tmp_path, uri, "--checkpoint-every", "4")
    for line in proc.stdout:
        if "step: 24/48" in line:
            proc.kill()  # SIGKILL: no handler runs, the run stays RUNNING
            break
    proc.communicate(timeout=120)
    (run,) = runs(uri)
    run_id = run.info.run_id
    assert run.info.status == "RUNNING" and run.data.tags["owner.pid"] == str(proc.pid)

    client = MlflowClient(uri)

    def cut_off_model() -> str:
        """What a process killed while logging its model leaves: a LoggedModel still PENDING."""
        return client.create_logged_model(run.info.experiment_id, name="model", source_run_id=run_id).model_id

    listed = cli("stale", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and f"{run_id}  resnet18-residual-seed0  owner gone" in (listed.stdout)
    before_stale = cut_off_model()
    marked = cli("stale", "--mark-killed", cwd=tmp_path, env=env)
    assert marked.returncode == 0 and "marked KILLED" in marked.stdout
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_logged_model(before_stale).status == "FAILED"
    before_resume = cut_off_model()

    # two resumes at once: exactly one trains, the other says why it does not
    both = [
        subprocess.Popen(
            [str(BIN / "resnet-mnist"), "train", "--resume", run_id],
            cwd=tmp_path,
            env=env_for(uri),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in both]
    codes = sorted(p.returncode for p in both)
    assert codes == [0, 1], [err[-1500:] for _, err in results]
    refused = next(err for p, (_, err) in zip(both, results, strict=True) if p.returncode == 1)
    assert (
        "being trained by another process" in refused
        or "is alive; stop it first" in refused
        or "already FINISHED" in refused
    ), refused
    done = client.get_run(run_id)
    assert done.info.status == "FINISHED"
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert sorted(str(m.status) for m in models) == ["FAILED", "FAILED", "READY"]
    assert client.get_logged_model(before_resume).tags["failure_reason"].startswith("its logging")
    for key, count in (("train_loss", 48), ("dev_accuracy", 6), ("train_epoch_loss", 3)):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)) == count, key


def test_a_running_run_with_a_live_owner_is_not_taken_over_and_ctrl_c_ends_it_killed(
    tmp_path: Path, empty_store: Path
) -> None:
    uri = copy_store(empty_store, tmp_path)
    # long enough (640 steps) that it is still training while the resume is refused
    proc = start_train(tmp_path, uri, "--epochs", "40")
    try:
        for line in proc.stdout:
            if "step: 8/640" in line:
                break
        (run,) = runs(uri)
        out = cli("train", "--resume", run.info.run_id, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
        assert out.returncode == 1 and "is alive; stop it first" in out.stderr
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C; SIGTERM is test_sigterm_then_resume_equals_uninterrupted's
        proc.communicate(timeout=120)
    assert proc.returncode == 130
    (run,) = runs(uri)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"].startswith("interrupted")


def burst(proc: subprocess.Popen, marker: str, count: int = 10) -> tuple[int, str, str]:
    """Once `marker` is printed, `count` SIGINTs 20 ms apart: an impatient user at the end of a
    run."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            for _ in range(count):
                if proc.poll() is not None:
                    break
                proc.send_signal(signal.SIGINT)
                time.sleep(0.02)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


def test_ten_ctrl_c_while_a_run_ends_leave_it_killed_never_running(tmp_path: Path, empty_store: Path) -> None:
    """The burst lands after training, while the run logs its model and ends: it ends KILLED
    with its reason, exit 130, one line; never RUNNING, never FINISHED."""
    uri = copy_store(empty_store, tmp_path)
    code, _, err = burst(start_train(tmp_path, uri, "--epochs", "1"), "[Test] best checkpoint")
    (run,) = runs(uri)
    assert code == 130, err
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted (Ctrl-C or SIGTERM)"
    assert "Traceback" not in err and f"run {run.info.run_id} was ended KILLED" in err


def test_ten_ctrl_c_while_compare_runs_leave_its_run_killed(tmp_path: Path, smoke_compared: Path) -> None:
    """Ten Ctrl-C while the comparison run is written: exit 130, one line, and the run KILLED with
    its reason. A stop is honoured between the run's writes (`safe_point`), so a burst that lands
    after the last of them leaves the run FINISHED, and then it must hold everything it writes."""
    uri = copy_store(smoke_compared, tmp_path)  # both variants trained and scored: compare starts at once
    before = {r.info.run_id for r in runs(uri, "resnet18-mnist-comparisons")}

    def made() -> list:
        return [r for r in runs(uri, "resnet18-mnist-comparisons") if r.info.run_id not in before]

    proc = subprocess.Popen(
        [str(BIN / "resnet-mnist"), "compare", "--preset", "smoke"],
        cwd=tmp_path,
        env=env_for(uri),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The burst is sent once the comparison run exists, however long the start takes (CI once
    # took over 120 s and the signals came before the run was made: nothing was left to check).
    while proc.poll() is None and not made():
        time.sleep(0.05)
    for _ in range(10):
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    new = made()
    assert len(new) == 1, err
    (comparison,) = new
    if proc.returncode == 0:  # the burst came after it had finished: nothing to check
        pytest.skip("compare finished before the signals arrived")
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    if comparison.info.status == "FINISHED":  # seen once: the burst came after the last write
        written = {a.path for a in MlflowClient(uri).list_artifacts(comparison.info.run_id, "comparison")}
        assert "comparison/verdict.txt" in written and "mlflow.note.content" in comparison.data.tags
        return
    assert comparison.info.status == "KILLED", comparison.data.tags
    assert comparison.data.tags["failure_reason"] == "interrupted (Ctrl-C or SIGTERM)"


def test_a_full_disk_while_writing_an_artifact_fails_the_run_naming_the_file(
    tmp_path: Path,
) -> None:
    """The artifact store on a real 8 MB filesystem: the 45 MB best checkpoint does not fit. One
    line naming the file, exit 1, the run FAILED with the reason; the store itself is fine."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    artifacts = tmp_path / "mlruns"
    artifacts.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(artifacts)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        env = {"MLFLOW_TRACKING_URI": uri}
        out = cli("train", "--preset", "smoke", "--epochs", "1", cwd=tmp_path, env=env)
        assert out.returncode == 1, out.stderr
        line = " ".join(out.stderr.split())
        assert "no space left on the device while writing" in line
        assert "/mlruns/" in line and "Traceback" not in out.stderr
        (run,) = runs(uri)
        assert run.info.status == "FAILED"
        assert run.data.tags["failure_reason"] == "OSError"
        assert "No space left on device" in run.data.tags["error"]
    finally:
        subprocess.run(["umount", str(artifacts)], capture_output=True)


#: A dead server is given up on after one immediate retry here; the default bound (about a
#: minute per call) is `offline.RETRY_BOUND`, checked in test_offline.
QUICK_GIVE_UP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


def server_to_lose(tmp_path: Path) -> tuple[int, str, dict[str, str]]:
    """A port for a tracking server that a test will kill, its URL, and the environment of a
    client that gives up on it quickly and keeps what it could not send in `tmp_path/state`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return (
        port,
        url,
        {"MLFLOW_TRACKING_URI": url, "RESNET_MNIST_STATE_DIR": str(tmp_path / "state")} | QUICK_GIVE_UP,
    )


def assert_same_histories(uri: str, run_id: str, reference: dict) -> None:
    """Every step once, and the same values as the uninterrupted reference (CPU), whose
    `histories` are given; the one-off scores logged once."""
    got = histories(uri, run_id)
    assert got["values"] == reference["values"]
    assert got["steps"] == reference["steps"]
    assert got["final"] == reference["final"]
    client = MlflowClient(uri)
    for key in ("test_accuracy", "best_dev_accuracy"):
        assert len(client.get_metric_history(run_id, key)) == 1, key


def train_until_the_server_dies(
    tmp_path: Path, env: dict[str, str], server: subprocess.Popen, at: str, *args: str
) -> tuple[subprocess.Popen, str]:
    """`resnet-mnist train --preset smoke --checkpoint-every 4 ARGS`; when its progress shows
    `at`, the server is killed while the command and its ranks are frozen, so the kill lands
    mid-run however loaded the machine is. Returns the ended process and its stderr."""
    import psutil

    proc = subprocess.Popen(
        [str(BIN / "resnet-mnist"), "train", "--preset", "smoke", "--checkpoint-every", "4", *args],
        cwd=tmp_path,
        env=env_for(env["MLFLOW_TRACKING_URI"]) | env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if at in line:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):  # a helper (`git`) may have ended
                    p.suspend()
            stop_server(server, signal.SIGKILL)
            for p in tree:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.resume()
            break
    _, err = proc.communicate(timeout=300)
    return proc, err


def test_a_server_killed_mid_run_keeps_everything_and_one_command_continues(
    tmp_path: Path, smoke_reference: dict
) -> None:
    port, url, env = server_to_lose(tmp_path)
    state = tmp_path / "state"
    server = start_mlflow_server(tmp_path, port)
    try:
        proc, err = train_until_the_server_dies(tmp_path, env, server, "step: 16/48")
        assert proc.returncode == 75, err[-3000:]
        assert "stopped answering (connection refused)" in err and "Traceback" not in err, err
        run_id = err.split("train --resume ")[1].split("`")[0]
        kept = state / "offline" / run_id
        assert {p.name for p in kept.iterdir()} == {"run.json", "metrics.jsonl", "resume.pt"}
        assert "unsent metric value" in err and str(kept) in " ".join(err.split())

        # While it is still down, resuming fails fast and keeps everything.
        down = cli("train", "--resume", run_id, cwd=tmp_path, env=env)
        assert down.returncode == 1 and "does not answer" in down.stderr
        assert (kept / "resume.pt").exists()

        server = start_mlflow_server(tmp_path, port)
        client = MlflowClient(url)
        assert client.get_run(run_id).info.status == "RUNNING"  # nobody could tell the server
        resumed = cli("train", "--resume", run_id, cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "sending what was kept" in resumed.stdout
        assert not kept.exists()
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert int(run.data.tags["offline.replayed"]) >= 1
        assert 17 <= int(run.data.tags["resumed_from_step"]) < 48
        assert run.data.tags["taken_over_from"].startswith(f"{proc.pid}@")
        assert_same_histories(url, run_id, smoke_reference)
    finally:
        stop_server(server)


def test_a_server_killed_under_a_distributed_run_ends_it_with_one_message_and_exit_75(tmp_path: Path) -> None:
    port, url, env = server_to_lose(tmp_path)
    state = tmp_path / "state"
    server = start_mlflow_server(tmp_path, port)
    try:
        proc, err = train_until_the_server_dies(tmp_path, env, server, "step: 8/48", "--nproc", "2")
        # Rank 0 says what happened and where things are kept; the rank it stopped says nothing.
        assert proc.returncode == 75, err[-3000:]
        assert err.count("error:") == 1 and "interrupted" not in err, err[-3000:]
        assert "stopped answering (connection refused)" in err and "Traceback" not in err, err
        run_id = err.split("train --resume ")[1].split("`")[0]
        assert (state / "offline" / run_id / "resume.pt").exists()

        server = start_mlflow_server(tmp_path, port)
        resumed = cli("train", "--resume", run_id, cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        client = MlflowClient(url)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
        steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert len(steps) == len(set(steps)) and max(steps) == 47
    finally:
        stop_server(server)


def test_a_server_lost_while_results_are_written_keeps_the_finished_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoke_reference: dict
) -> None:
    import mlflow

    from resnet_mnist.config.settings import build_config
    from resnet_mnist.core.trainer import Callback
    from resnet_mnist.tracking.offline import TrackingLost
    from resnet_mnist.tracking.request import RunRequest
    from resnet_mnist.tracking.runner import resume, train

    port, url, env = server_to_lose(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key, value in (env | {"RESNET_MNIST_DATA": str(REAL_ROOT)}).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(url)
    server = start_mlflow_server(tmp_path, port)

    class ServerDiesAtTheEnd(Callback):
        """After the tracker has sent the last step's metrics, before the results are logged."""

        def on_end(self, result: object) -> None:
            stop_server(server, signal.SIGKILL)

    try:
        with pytest.raises(TrackingLost) as lost:
            train(RunRequest(build_config("smoke", True)), callbacks=[ServerDiesAtTheEnd()])
        assert mlflow.active_run() is None
        spool = lost.value.spool
        assert lost.value.step == 48 and spool.checkpoint is not None
        server = start_mlflow_server(tmp_path, port)
        done = resume(RunRequest.resuming(spool.run_id))
        client = MlflowClient(url)
        run = client.get_run(done.run_id)
        assert run.info.status == "FINISHED" and not spool.path.exists()
        assert run.data.tags["resumed_from_step"] == "48"
        assert mlflow.pyfunc.load_model(run.data.tags["logged_model_uri"])
        assert_same_histories(url, done.run_id, smoke_reference)
    finally:
        stop_server(server)
