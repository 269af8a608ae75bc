"""Training settings: TrainConfig (every hyper-parameter once), allowed values, presets, studies."""
