"""Model, data, trainer, checkpoints, device, distributed, diagnostics, complexity; no MLflow."""
