"""Answers from what MLflow recorded: summaries, statistics, selection, scoring, registry, compare."""
