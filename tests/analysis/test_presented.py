"""Logging per-digit scores to a model: a URI that names no tracked model is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from resnet_mnist.analysis.presented import EvaluationError, log_presented


def test_a_model_mlflow_does_not_know_is_refused(store: str) -> None:
    with pytest.raises(EvaluationError, match="cannot log to models:/nobody@champion"):
        log_presented("models:/nobody@champion", {"mnist": np.eye(10, dtype=np.int64)})
