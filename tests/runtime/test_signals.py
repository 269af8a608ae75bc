"""Signals: the first asks to stop, a second interrupts, and none cuts a run's ending short; an
error while ending a run makes it FAILED, never FINISHED (real store, real signals)."""

from __future__ import annotations

import os
import signal

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.runtime.signals import shielded, stop_on_signals
from resnet_mnist.tracking import lifecycle as runs
from resnet_mnist.tracking.lifecycle import RunInterrupted, ended


def test_first_signal_asks_to_stop_second_interrupts() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_shield_holds_signals_until_it_ends() -> None:
    finished = []
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            with shielded():
                with shielded():
                    for _ in range(10):
                        os.kill(os.getpid(), signal.SIGINT)
                    finished.append("inner")
                finished.append("outer")
        assert finished == ["inner", "outer"]
        # An error inside the shield is what propagates; the held signal does not replace it.
        with pytest.raises(ValueError):
            with shielded():
                os.kill(os.getpid(), signal.SIGTERM)
                raise ValueError("the real error")
        with shielded():
            pass  # nothing held any more


def _started(store: str) -> str:
    mlflow.set_experiment("signals")
    return mlflow.start_run(run_name="ending").info.run_id


def test_ten_signals_while_a_run_ends_leave_it_killed_with_its_reason(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _started(store)
    real_set_tag = MlflowClient.set_tag
    sent = []

    def set_tag_under_fire(self, *args, **kwargs):
        if not sent:  # an impatient user, while the reason is being written
            for _ in range(10):
                os.kill(os.getpid(), signal.SIGINT)
            sent.append(10)
        return real_set_tag(self, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "set_tag", set_tag_under_fire)
    with stop_on_signals() as stop:
        stop.set()
        with pytest.raises(RunInterrupted) as info:
            with ended(run_id):
                raise KeyboardInterrupt("the second Ctrl-C")
    assert info.value.run_id == run_id and sent == [10]
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags["failure_reason"] == "interrupted (Ctrl-C or SIGTERM)"
    assert mlflow.active_run() is None


def test_a_signal_while_finishing_waits_for_the_status(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = _started(store)
    real_end = mlflow.end_run

    def end_under_fire(status: str = "FINISHED") -> None:
        os.kill(os.getpid(), signal.SIGINT)
        real_end(status)

    monkeypatch.setattr(mlflow, "end_run", end_under_fire)
    with stop_on_signals() as stop:
        stop.set()
        with pytest.raises(KeyboardInterrupt):
            with ended(run_id):
                pass
    # the work was done before the signal came: the run is FINISHED, then the process stops
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"


def test_an_error_while_ending_makes_the_run_failed_not_finished(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _started(store)

    def broken_end(status: str = "FINISHED") -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(mlflow, "end_run", broken_end)
    with pytest.raises(OSError, match="No space left"):
        with ended(run_id):
            pass
    monkeypatch.undo()
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == ("error while ending the run: OSError: No space left on device")
    runs._terminate(MlflowClient(), run_id, "FAILED")  # pops the fluent stack the error left
