"""One run request: what to train (the settings), where (the placement) and where its run lives
(experiment, name, parent, tags, a run to adopt or to resume).

Every entry point builds one (`train`, compare's training of missing runs, a study cell, a tune
trial); the runner and the run's lifecycle take nothing else, so a new entry point cannot pass
settings or placement in a way of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from resnet_mnist.config.placement import Placement
from resnet_mnist.config.settings import TrainConfig
from resnet_mnist.tracking.names import DEFAULT_EXPERIMENT


@dataclass(frozen=True)
class RunRequest:
    """One training as one MLflow run.

    `adopt` names a run another tool made for this process (the one `mlflow run` passes), which
    becomes the training run; `resume` names a stopped run to continue, whose own logged
    settings are used (`settings` is then None until the runner reads them).
    """

    settings: TrainConfig | None
    placement: Placement = field(default_factory=Placement)
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    parent_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    adopt: str | None = None
    resume: str | None = None

    @classmethod
    def resuming(cls, run_id: str, placement: Placement | None = None) -> RunRequest:
        """Continue `run_id` with its logged settings, here."""
        return cls(settings=None, placement=placement or Placement(), resume=run_id)

    @property
    def config(self) -> TrainConfig:
        """The settings; for a resume, once the runner has read them from the run."""
        if self.settings is None:
            raise ValueError(f"run {self.resume}'s settings have not been read yet")
        return self.settings

    def with_settings(self, settings: TrainConfig) -> RunRequest:
        return dataclasses.replace(self, settings=settings)

    def validate(self) -> RunRequest:
        """Refuse, before any run starts, settings that cannot run where they are placed."""
        if self.settings is not None:
            self.placement.validate(self.settings)
        return self
