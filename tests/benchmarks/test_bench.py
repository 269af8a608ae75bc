"""The benchmark harness runs end to end and writes a self-consistent report (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, needs_data, run_python, two_cell_study

pytestmark = pytest.mark.slow  # real processes


def bench(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`python -m benchmarks …` as `make bench` runs it, from a folder outside the checkout."""
    return run_python("-m", "benchmarks", *args, cwd=cwd, env=env | {"PYTHONPATH": str(REPO)})


@needs_data
def test_quick_bench_writes_consistent_report(tmp_path: Path) -> None:
    out = bench(
        "--quick",
        "--repeats",
        "1",
        "--device",
        "cpu",
        "--out",
        "report",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'unused.db'}"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads((tmp_path / "report" / "bench.json").read_text())

    sizes = {(r["batch_size"], r["memory_format"]) for r in report["throughput"]}
    assert sizes == {(b, f) for b in (128, 512) for f in ("contiguous", "channels_last")}
    assert all(r["images_per_s"]["median"] > 0 for r in report["throughput"])

    assert report["lightning"], "no Python with Lightning for the peer: `make test` makes .venv-bench"
    assert list(report["book_experiment"]) == ["true"]  # --quick measures the residual variant only
    row = report["book_experiment"]["true"]
    process, inside = row["cli_process_s"]["median"], row["cli_train_and_eval_s"]["median"]
    # The run's own training + evaluation time is read back from its MLflow run: it is part
    # of the process, and the rest is what start-up, the store and model logging cost.
    assert 0 < inside < process
    assert row["cli_rest_s"]["median"] == pytest.approx(process - inside)
    assert row["ratio"]["median"] == pytest.approx(process / row["reference_loop_s"]["median"])
    # The book-style loop as a script of its own: Python and torch start-up included.
    assert row["reference_process_s"]["median"] > row["reference_loop_s"]["median"]
    assert row["process_ratio"]["median"] == pytest.approx(process / row["reference_process_s"]["median"])
    assert row["reference_process_peak_mib"]["median"] > 100
    assert 0.0 <= row["reference_test_accuracy"] <= 1.0
    # The Lightning peer (installed by `make test`), a process of its own like the script.
    assert row["peer_process_s"]["median"] > 0 and row["peer_peak_mib"]["median"] > 100
    assert row["peer_ratio"]["median"] == pytest.approx(process / row["peer_process_s"]["median"])
    assert 0.0 <= row["peer_test_accuracy"] <= 1.0
    # Every stage of the process is timed, and together they make up its wall time.
    stages = row["stages_s"]
    # The stages are the process's own marks (their names are the timeline's business): the
    # first is start-up, the last the teardown after the summary, training is one of them.
    names = list(stages)
    assert names[0] == "startup" and names[-1] == "teardown" and "training" in names
    assert len(set(names)) == len(names) >= 4
    assert all(v["median"] >= 0 for v in stages.values())
    assert sum(v["median"] for v in stages.values()) == pytest.approx(process, abs=0.5)
    assert stages["training"]["median"] >= inside
    assert row["fixed_cost_s"]["median"] == pytest.approx(process - stages["training"]["median"], abs=0.5)
    peaks = row["stage_peaks_mib"]
    assert 0 < peaks["startup"]["median"] < peaks["training"]["median"]
    assert row["peak_mib"]["median"] == max(p["median"] for p in peaks.values())
    share = report["tracking_overhead"]["share_in_mlflow_calls"]["median"]
    assert 0 < share < 1

    assert "study" not in report  # asked for with --study (the next test)
    md = (tmp_path / "report" / "bench.md").read_text()
    assert "| residual |" in md and "| plain |" not in md
    assert "| **fixed cost**: everything but `training` |" in md
    assert "| model: pt2 model exported and logged |" in md
    assert "GPU figures: not measured" in md
    assert f"Lightning {report['lightning']} + MLFlowLogger" in md and "Lightning process" in md
    # The benchmark's own temporary store, not the caller's, holds its runs.
    assert not (tmp_path / "unused.db").exists()


@pytest.mark.ray
@needs_data
def test_the_study_stage_measures_ray_and_the_schedule(tmp_path: Path) -> None:
    """`make bench --study`'s stage on its own (`python -m benchmarks.study`), on a two-cell study
    with one slot, and the report's section drawn from what it measured."""
    from benchmarks.report import study_section

    study_path = two_cell_study(tmp_path)
    out = run_python(
        "-m",
        "benchmarks.study",
        str(study_path),
        "1",
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'unused.db'}"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    study = json.loads(out.stdout)
    assert study["cells"] == 2 and list(study["per_depth"]) == ["8"]
    cell = study["per_depth"]["8"]
    assert cell["cell_s"]["n"] == 2 and 0 < cell["train_s"]["median"] < cell["cell_s"]["median"]
    assert 2 * cell["cell_s"]["min"] < study["wall_s"]  # one worker: cells one after another
    # Ray's start-up as the study reported it, its processes seen while the study ran, and the
    # schedule read back from the cells' runs: one slot, so never two cells at once
    assert 0 < study["ray_startup_s"] < study["wall_s"]
    assert study["ray_processes"] >= 2 and study["ray_peak_rss_mb"] > 50
    assert study["worker_peak_rss_mb"] > 100  # a worker that imported torch and trained
    sched = study["schedule"]
    assert sched["most_at_once"] == 1 and 0 < sched["mean_at_once"] <= 1
    assert sched["span_s"] < study["wall_s"] and set(sched["every_minute"]) <= {0, 1}
    assert not (tmp_path / "unused.db").exists()  # the stage's own temporary store holds its runs

    md = "\n".join(study_section(study))
    assert f"## The {study_path} study (2 cells, 1 workers)" in md
    assert f"resnet-mnist study --study {study_path} --workers 1 --device cpu" in md
    assert "Cells running at once" in md
