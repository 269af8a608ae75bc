"""The one checkpoint reader: round trip through a run's artifacts, a missing file named, and a
pickle that would run code refused."""

from __future__ import annotations

import mlflow
import pytest
import torch

from resnet_mnist.tracking.checkpoints import (
    BEST,
    RESUME,
    MissingCheckpoint,
    RefusedCheckpoint,
    fetch_checkpoint,
    load_checkpoint,
)


def test_a_logged_checkpoint_comes_back_as_saved(store, tmp_path) -> None:
    saved = {"state": {"step": 7}, "weights": torch.arange(4.0)}
    torch.save(saved, tmp_path / "resume.pt")
    mlflow.set_experiment("checkpoints")  # not the experiment an earlier test made active
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(tmp_path / "resume.pt"), "checkpoints")
    loaded = fetch_checkpoint(run.info.run_id, RESUME)
    assert loaded["state"] == {"step": 7} and torch.equal(loaded["weights"], saved["weights"])


def test_a_missing_checkpoint_is_named(store) -> None:
    mlflow.set_experiment("checkpoints")
    with mlflow.start_run() as run:
        pass
    with pytest.raises(MissingCheckpoint):
        fetch_checkpoint(run.info.run_id, BEST)


class Payload:
    """An object whose unpickling would import and call code of ours."""


def test_objects_that_are_not_tensors_are_refused(tmp_path) -> None:
    torch.save({"payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(RefusedCheckpoint, match="other than tensors"):
        load_checkpoint(tmp_path / "evil.pt")
