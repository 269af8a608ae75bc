"""Model, data, trainer, augmentation, checkpoints, device, distributed, diagnostics, complexity, and
test digits presented as people bring them; no MLflow."""
