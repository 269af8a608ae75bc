"""Every default name the project's records live under, once (as MLflow's own `mlflow_tags.py`
keeps its tag keys): experiments, the registered model, its alias and URI."""

from __future__ import annotations

#: Training runs (`train`, `compare --train-missing`, `mlflow run .`).
DEFAULT_EXPERIMENT = "resnet18-mnist"
#: A comparison run lives beside its training runs, in `<their experiment><COMPARISONS>`.
COMPARISONS = "-comparisons"
#: The residual study's cells and study runs.
STUDY_EXPERIMENT = "resnet-mnist-study"
#: The registered model and the alias that `compare` moves to a model at least as good.
MODEL_NAME = "resnet18-mnist"
CHAMPION = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"
