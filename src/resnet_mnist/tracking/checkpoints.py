"""A run's checkpoints: the callback that writes them (Lightning's `ModelCheckpoint`: the file is
written here, the logger only uploads it), where they live as artifacts, and the one way they are
read back, with `weights_only=True` so that loading a checkpoint from a store never runs code."""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException

from resnet_mnist.core.trainer import Callback
from resnet_mnist.runtime.errors import ProjectError, first_line

#: Replaced at every save while a run trains; what `resume` continues from.
RESUME = "checkpoints/resume.pt"
#: The best-dev `state_dict`; what `compare` scores and the logged model holds.
BEST = "checkpoints/best_model.pt"


class MissingCheckpoint(ProjectError):
    """The run has no such checkpoint (it stopped before one was written, or it is not ours)."""


class RefusedCheckpoint(ProjectError):
    """The file holds objects other than tensors and plain values, so it was not loaded."""


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint file's contents on the CPU, refusing anything but tensors and plain values."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RefusedCheckpoint(
            f"it holds objects other than tensors and plain values ({str(exc)[:200]})"
        ) from None


def fetch_checkpoint(run_id: str, artifact: str) -> dict:
    """The run's checkpoint `artifact` (`RESUME` or `BEST`), downloaded and loaded."""
    import mlflow.artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise MissingCheckpoint(first_line(exc)) from None
        return load_checkpoint(path)


def write(content: dict, path: Path) -> Path:
    """`content` (plain tensors and values) saved as `path`, in a folder of the training's own:
    nothing reads it until the save has returned, and the spool copies what it keeps whole."""
    torch.save(content, path)
    return path


class CheckpointWriter(Callback):
    """Writes each resumable checkpoint the Trainer makes to `folder/resume.pt` (replacing the
    last) and hands the file and its step to `saved`: the logger, which uploads it."""

    def __init__(self, folder: Path, saved: Callable[[Path, int], None]) -> None:
        self.folder, self.saved = folder, saved

    def on_checkpoint(self, step: int, checkpoint: dict) -> None:
        self.saved(write(checkpoint, self.folder / Path(RESUME).name), step)


def write_best(state: dict[str, torch.Tensor], folder: Path) -> Path | None:
    """The best-dev `state_dict` as `folder/best_model.pt`; None before any evaluation."""
    return write(state, folder / Path(BEST).name) if state else None
