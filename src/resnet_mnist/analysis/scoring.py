"""A run's best-dev checkpoint scored on the full splits (10,000 dev and 10,000 test images),
once per run: the scores and the evaluation are logged back to the run."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.evaluation import (
    Evaluation,
    evaluate_model,
    per_digit_table,
    plot_confusion,
    plot_mistakes,
    plot_per_digit,
)
from resnet_mnist.analysis.selection import variant_of
from resnet_mnist.analysis.summary import CompareError
from resnet_mnist.core import data as D
from resnet_mnist.core.model import build_resnet
from resnet_mnist.runtime.errors import first_line
from resnet_mnist.tracking import names
from resnet_mnist.tracking.checkpoints import BEST, MissingCheckpoint, RefusedCheckpoint, fetch_checkpoint

#: The per-digit test scores, a table artifact under `evaluation/` of the run and its LoggedModel.
PER_DIGIT = "per_digit.json"
MNIST_TEST = "mnist-test"

# -- scoring runs on the full splits ------------------------------------------------------------


@dataclass(frozen=True)
class FullScores:
    """A best-dev checkpoint's loss and accuracy on the full dev split and the full test set."""

    dev_accuracy: float
    dev_loss: float
    test_accuracy: float
    test_loss: float


class FullSplitScorer:
    """Scores a run's best-dev checkpoint on all 10,000 dev images (the last 10,000 official
    training images) and all 10,000 official test images, once per run.

    What it finds is logged to the run itself at its `best_step`, so a second comparison reads it
    back instead of recomputing: `dev_accuracy_full`, `dev_loss_full`, `test_accuracy_full` and
    `test_loss_full` (also on the run's LoggedModel, with the dataset `mnist-dev` or `mnist-test`),
    and `evaluation/`: the test confusion matrix (PNG and JSON), per-digit precision, recall and F1
    (a table and a figure, not thirty single-point metrics that would open the UI's chart view)
    and the most confident test mistakes (PNG); the LoggedModel gets the same folder.
    """

    SPLITS = ("dev", "test")

    def __init__(self, client: MlflowClient, data_root: str | None = None) -> None:
        self.client = client
        self.data_root = data_root
        self.splits: dict[str, D.Split] = {}
        self.tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _split(self, name: str, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.splits:
            self.splits = D.book_split(D.load(self.data_root), 1, D.DEV_SIZE, D.TEST_SIZE)
        if (name, normalize) not in self.tensors:
            images, labels = D.to_tensors(self.splits[name], normalize)
            self.tensors[name, normalize] = images.contiguous(memory_format=torch.channels_last), labels
        return self.tensors[name, normalize]

    def _model(self, run: Run) -> torch.nn.Module:
        """The run's best-dev checkpoint in the network its params describe."""
        params, run_id = run.data.params, run.info.run_id
        try:
            state = fetch_checkpoint(run_id, BEST)
        except MissingCheckpoint as exc:
            raise CompareError(f"run {run_id} has no best-dev checkpoint to score ({BEST}: {exc})") from None
        except RefusedCheckpoint as exc:
            raise CompareError(f"refused {BEST} of run {run_id}: {exc}") from None
        depth = int(params.get("depth", 18))
        model = build_resnet(depth, use_residual=variant_of(run) == "residual")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CompareError(
                f"run {run_id}: its checkpoint is not a depth-{depth} "
                f"{variant_of(run)} network ({first_line(exc)})"
            ) from None
        # Channels-last: oneDNN's convolutions read it without reordering each batch (measured
        # with one thread on 10,000 images: 1.5x faster with batches of 256, docs/performance.md).
        return model.to(memory_format=torch.channels_last)

    def __call__(self, run: Run) -> FullScores:
        metrics = dict(run.data.metrics)
        todo = [s for s in self.SPLITS if not {f"{s}_accuracy_full", f"{s}_loss_full"} <= set(metrics)]
        if todo:
            model = self._model(run)
            for split in todo:
                result = evaluate_model(model, *self._split(split, run.data.params.get("normalize", "seed")))
                self._log(run, split, result)
                metrics |= {f"{split}_accuracy_full": result.accuracy, f"{split}_loss_full": result.loss}
        return FullScores(
            metrics["dev_accuracy_full"],
            metrics["dev_loss_full"],
            metrics["test_accuracy_full"],
            metrics["test_loss_full"],
        )

    def _log(self, run: Run, split: str, ev: Evaluation) -> None:
        run_id, step = run.info.run_id, int(run.data.metrics.get("best_step", 0))
        now = int(time.time() * 1000)
        model_uri = run.data.tags.get(names.LOGGED_MODEL_URI, "")
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        size = D.DEV_SIZE if split == "dev" else D.TEST_SIZE
        digest = D.split_digest(split, size)
        scores = [
            Metric(
                key,
                value,
                now,
                step,
                model_id=model_id,
                dataset_name=f"mnist-{split}" if model_id else None,
                dataset_digest=digest if model_id else None,
            )
            for key, value in ((f"{split}_accuracy_full", ev.accuracy), (f"{split}_loss_full", ev.loss))
        ]
        self.client.log_batch(run_id, metrics=scores)
        if split == "dev":
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "confusion_matrix.json").write_text(
                json.dumps(
                    {
                        "rows": "true digit",
                        "columns": "predicted digit",
                        "matrix": ev.confusion.tolist(),
                        "accuracy": ev.accuracy,
                    },
                    indent=1,
                )
            )
            plot_confusion(
                ev,
                folder / "confusion_matrix.png",
                f"{run.info.run_name}: {ev.accuracy:.2%} of 10,000 test digits",
            )
            per_digit = {MNIST_TEST: ev.confusion}
            plot_per_digit(
                per_digit,
                folder / "per_digit.png",
                f"{run.info.run_name}: per-digit scores on 10,000 test digits",
            )
            plot_mistakes(ev, self.splits["test"].images, folder / "mistakes.png")
            self.client.log_artifacts(run_id, tmp, "evaluation")
            table = per_digit_table(per_digit)
            self.client.log_table(run_id, table, f"evaluation/{PER_DIGIT}")
            if model_id:
                (folder / PER_DIGIT).write_text(pd.DataFrame(table).to_json(orient="split", index=False))
                self.client.log_model_artifacts(model_id, tmp, "evaluation")
