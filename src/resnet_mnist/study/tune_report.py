"""What a search found, read back from its trials' runs: a table of every trial, the best dev
accuracy so far against trials (so a reader sees how the search went), the best settings as a
preset file, and what pruning saved; all logged to the tune run, whose note says it in words."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.tables import write_table
from resnet_mnist.config.settings import FIELDS, TrainConfig, coerce
from resnet_mnist.config.space import ConfigError
from resnet_mnist.core.figures import save_figure
from resnet_mnist.study.trials import COMPLETE, FAILED, PRUNED, counts, state_of
from resnet_mnist.study.tune import TuneHome, TuneSpec, trial_runs
from resnet_mnist.tracking import names

COLUMNS = ["trial", "state", "dev accuracy", "steps", "run id", "reason"]


@dataclass(frozen=True)
class Trial:
    """One trial as its run recorded it."""

    number: int
    state: str
    value: float
    steps: int
    settings: dict[str, str]
    run_id: str
    reason: str


@dataclass(frozen=True)
class Findings:
    """A search's trials read back: the best complete one, and what pruning saved."""

    trials: list[Trial]
    best: Trial | None
    pruned: int
    failed: int
    #: training steps pruning saved, of all the steps the trials would have trained
    saved: int
    all_steps: int
    #: trials that spent budget (complete, pruned, diverged)
    spent: int

    def chosen(self, spec: TuneSpec) -> dict[str, object] | None:
        """The best trial's searched settings, typed as the settings take them."""
        if self.best is None:
            return None
        return {k: coerce(k, v) for k, v in self.best.settings.items() if k in spec.space.names()}


def findings(runs: list[Run], spec: TuneSpec) -> Findings:
    """What a search's trial runs came to."""
    by_id = {r.info.run_id: r for r in runs}
    trials = trials_of(runs, spec)
    done = [t for t in trials if t.state == COMPLETE]
    pruned = [t for t in trials if t.state == PRUNED]
    totals = {t.run_id: total_steps(spec, by_id[t.run_id]) for t in trials}
    return Findings(
        trials=trials,
        best=max(done, key=lambda t: t.value) if done else None,
        pruned=len(pruned),
        failed=sum(t.state == FAILED for t in trials),
        saved=sum(totals[t.run_id] - t.steps for t in pruned),
        all_steps=sum(totals.values()),
        spent=sum(counts(r) for r in runs),
    )


@dataclass(frozen=True)
class Summary:
    """The search in words, and where its best settings were written."""

    text: str
    preset_path: Path
    best: Trial | None


def trials_of(runs: list[Run], spec: TuneSpec) -> list[Trial]:
    """Every trial of the search's runs by number; a pruned trial's value is its last dev
    accuracy."""
    out = []
    for run in runs:
        state = state_of(run)
        metrics, tags = run.data.metrics, run.data.tags
        value = metrics.get(names.OPTUNA_VALUE, math.nan)
        steps = total_steps(spec, run) if state == COMPLETE else _steps(run)
        out.append(
            Trial(
                number=int(tags.get(names.TUNE_TRIAL, tags.get(names.OPTUNA_NUMBER, "-1"))),
                state=state,
                value=value if state in (COMPLETE, PRUNED) else math.nan,
                steps=steps,
                settings={k: run.data.params.get(k, "") for k in spec.space.names()},
                run_id=run.info.run_id,
                reason=tags.get(names.FAILURE_REASON, "") if state != COMPLETE else "",
            )
        )
    return sorted(out, key=lambda t: t.number)


def total_steps(spec: TuneSpec, run: Run) -> int:
    """The steps a trial's whole training has (a searched batch size or epochs change them)."""
    params = run.data.params
    searched = {k: coerce(k, params[k]) for k in spec.space.names() if k in params}
    try:
        return spec.config_for(searched).total_steps()
    except ConfigError:
        return spec.base.total_steps()


def _steps(run: Run) -> int:
    tags = run.data.tags
    for key in (names.STOPPED_EARLY_AT_STEP, names.FAILED_AT_STEP, names.STOPPED_AT_STEP):
        if key in tags:
            return int(tags[key]) + (key != names.STOPPED_AT_STEP)
    return 0


def best_so_far(trials: list[Trial]) -> list[tuple[int, float]]:
    """(trial number, the best complete trial's dev accuracy up to it), from the first complete."""
    curve, best = [], -math.inf
    for trial in trials:
        if trial.state == COMPLETE and trial.value > best:
            best = trial.value
        if best > -math.inf:
            curve.append((trial.number, best))
    return curve


def plot_best_so_far(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """Best dev accuracy so far against trials, one line per search (the study draws both
    variants' searches in one figure)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, curve in curves.items():
        if curve:
            ax.step([n for n, _ in curve], [100 * v for _, v in curve], where="post", label=label, marker="o")
    ax.set(xlabel="trial", ylabel="best dev accuracy so far (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def best_preset(base: TrainConfig, best: Trial) -> str:
    """The best trial's settings as a preset file (`--preset` reads it back)."""
    values = {
        k: (v.value if hasattr(v, "value") else v)
        for k, v in base.params().items()
        if k in FIELDS and FIELDS[k].metadata.get("preset", True)
    }
    for key, raw in best.settings.items():
        values[key] = type(values[key])(raw) if not isinstance(values[key], bool) else raw == "True"
    header = (
        f"# The best settings tune found for {base.architecture} on preset {base.preset}: trial "
        f"{best.number}, dev accuracy {best.value:.2%} (run {best.run_id}).\n"
        f"# A preset holds no variant: resnet-mnist train --preset FILE --use-residual "
        f"{str(base.use_residual).lower()}\n"
    )
    return header + yaml.safe_dump(values, sort_keys=False)


def report(client: MlflowClient, home: TuneHome, spec: TuneSpec, out: Path) -> Summary:
    """Write and log the search's table, figure, best preset and note; returns the summary."""
    found = findings(trial_runs(client, home), spec)
    trials, best = found.trials, found.best
    out.mkdir(parents=True, exist_ok=True)
    rows = [
        [
            str(t.number),
            t.state,
            "" if math.isnan(t.value) else f"{t.value:.4f}",
            str(t.steps),
            t.run_id,
            t.reason,
        ]
        for t in trials
    ]
    columns = COLUMNS[:2] + spec.space.names() + COLUMNS[2:]
    rows = [
        r[:2] + [_short(t.settings[k]) for k in spec.space.names()] + r[2:]
        for r, t in zip(rows, trials, strict=True)
    ]
    paths = write_table(columns, rows, out / "trials")
    paths.append(
        plot_best_so_far(
            {spec.base.architecture: best_so_far(trials)}, out / "best_so_far.png", home.study_name
        )
    )
    preset_path = out / "best.yaml"
    if best is not None:
        preset_path.write_text(best_preset(spec.base, best))
        paths.append(preset_path)
    text = _words(spec, found)
    _log(client, home, spec, paths, text, found)
    return Summary(text, preset_path, best)


def _short(text: str) -> str:
    """A logged float with 4 significant digits (the run's params keep every digit)."""
    try:
        value = float(text)
    except ValueError:
        return text
    return text if value.is_integer() and "." not in text and "e" not in text else f"{value:.4g}"


def _words(spec: TuneSpec, found: Findings) -> str:
    base, best = spec.base, found.best
    head = (
        f"{len(found.trials)} trials of {base.architecture} ({base.preset}): {found.pruned} pruned, "
        f"{found.failed} failed. "
    )
    if best is None:
        return head + "No trial has completed yet."
    settings = ", ".join(f"{k}={_short(v)}" for k, v in best.settings.items())
    text = head + f"Best: trial {best.number}, dev accuracy {best.value:.2%}, with {settings}."
    if found.all_steps:
        text += (
            f" Pruning stopped {found.pruned} trials early and saved {found.saved} of "
            f"{found.all_steps} training steps ({found.saved / found.all_steps:.0%})."
        )
    return text


def _log(
    client: MlflowClient,
    home: TuneHome,
    spec: TuneSpec,
    paths: list[Path],
    text: str,
    found: Findings,
) -> None:
    now = int(time.time() * 1000)
    best, spent = found.best, found.spent
    tags = {
        names.TUNE_STATUS: "complete" if spent >= spec.trials else "searching",
        names.TUNE_TRIALS: str(spec.trials),
        names.TUNE_PRUNER: str(spec.pruner),
        names.TUNE_SAMPLER: f"TPE (seed {spec.sampler_seed})",
        names.NOTE: text,
    }
    if best is not None:
        tags |= {
            names.TUNE_BEST_TRIAL: str(best.number),
            names.TUNE_BEST_RUN: best.run_id,
            names.TUNE_BEST_SETTINGS: json.dumps(found.chosen(spec), default=str),
        }
    for key, value in tags.items():
        client.set_tag(home.run_id, key, value)
    metrics: dict[str, float] = {
        "trials_spent": spent,
        "trials_pruned": found.pruned,
        "trials_failed": found.failed,
        "pruning_saved_steps": found.saved,
    }
    if best is not None:
        metrics["best_dev_accuracy"] = best.value
    client.log_batch(home.run_id, metrics=[Metric(k, float(v), now, spent) for k, v in metrics.items()])
    for path in paths:
        client.log_artifact(home.run_id, str(path), "tune")
