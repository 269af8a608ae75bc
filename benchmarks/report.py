"""The benchmark's report: `bench.json`'s figures as Markdown (`bench.md`), tables only; what is
measured, and how, is `bench`."""

from __future__ import annotations

from typing import Any

#: The stages of a `train` process (`timeline` marks) as the report names them.
STAGES = {
    "startup": "Python, torch and the CLI imported",
    "imports": "MLflow (with pandas, SQLAlchemy) and our modules",
    "data": "MNIST read and preprocessed",
    "store": "tracking store opened",
    "torch_dynamo": "torch's compiler front end (torch.optim imports it when an optimiser is built)",
    "complexity": "parameters, MACs, FLOPs (cached per architecture)",
    "run_start": "run created, params, datasets",
    "training": "training + evaluation + test (of which the run's train_time_s + eval_time_s is the compute)",
    "checkpoint": "best checkpoint logged",
    "curves": "matplotlib imported, curves plotted and logged",
    "model": "pt2 model exported and logged",
    "run_end": "scores, run ended",
    "summary": "summary printed",
    "teardown": "process exit",
}


def _fixed_cost_table(book: dict[str, Any]) -> list[str]:
    """Where a `train` process's time and memory go, stage by stage (medians), per variant."""
    variants = [v for v in ("false", "true") if "stages_s" in book.get(v, {})]
    if not variants:
        return []
    names = ["plain" if v == "false" else "residual" for v in variants]
    lines = [
        "",
        "## Where a `train` process's time goes (seed preset; seconds and peak memory "
        "at the end of each stage, medians)",
        "",
        "| stage | " + " | ".join(f"{n} s | {n} peak MiB" for n in names) + " |",
        "|---|" + "---|---|" * len(variants),
    ]
    for stage, label in STAGES.items():
        if stage not in book[variants[0]]["stages_s"]:
            continue
        cells = []
        for v in variants:
            seconds = book[v]["stages_s"][stage]["median"]
            peak = book[v]["stage_peaks_mib"].get(stage, {}).get("median")
            cells += [f"{seconds:.2f}", f"{peak:,.0f}" if peak else "—"]
        lines.append(f"| {stage}: {label} | " + " | ".join(cells) + " |")
    fixed = [book[v]["fixed_cost_s"]["median"] for v in variants]
    peaks = [book[v]["peak_mib"]["median"] for v in variants]
    fixed_cells = [cell for f in fixed for cell in (f"**{f:.2f}**", "")]
    peak_cells = [cell for p in peaks for cell in ("", f"**{p:,.0f}**")]
    lines += [
        "| **fixed cost**: everything but `training` | " + " | ".join(fixed_cells) + " |",
        "| **peak resident memory of the process** | " + " | ".join(peak_cells) + " |",
    ]
    return lines


def _cell(s: dict[str, float]) -> str:
    return f"{s['median']:.1f} [{s['min']:.1f}–{s['max']:.1f}]"


def _book_table(book: dict[str, Any], lightning: str | None) -> list[str]:
    """A whole `train` process against each reference, seconds and peak memory."""
    rows = {("residual" if v == "true" else "plain"): r for v, r in book.items() if v in ("false", "true")}
    peer = all("peer_process_s" in r for r in rows.values())
    lines = [
        "",
        "## The book's experiment (seed preset), seconds, median [min–max]",
        "",
        "| variant | `resnet-mnist train` process | of which training + evaluation | "
        "the rest (start-up, store, logging) | book-style loop (in the bench's process) "
        "| ratio | book-style loop as a process of its own | ratio |"
        + (f" Lightning {lightning} + MLFlowLogger, a process of its own | ratio |" if peer else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|---|" if peer else ""),
    ]
    for name, row in rows.items():
        cells = [
            _cell(row[k]) for k in ("cli_process_s", "cli_train_and_eval_s", "cli_rest_s", "reference_loop_s")
        ]
        cells.insert(4, f"{row['ratio']['median']:.2f}")
        cells += [_cell(row["reference_process_s"]), f"{row['process_ratio']['median']:.2f}"]
        if peer:
            cells += [_cell(row["peer_process_s"]), f"{row['peer_ratio']['median']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Peak resident memory, MiB (median): "
        + "; ".join(
            f"{name}: `train` process {r['peak_mib']['median']:,.0f}, book-style loop process "
            f"{r['reference_process_peak_mib']['median']:,.0f}"
            + (f", Lightning process {r['peer_peak_mib']['median']:,.0f}" if peer else "")
            for name, r in rows.items()
        )
        + ".",
    ]
    if not peer:
        lines += [
            "",
            "The Lightning peer: not measured (no Python with PyTorch Lightning; "
            "`make bench` sets up `.venv-bench`).",
        ]
    return lines


def study_section(st: dict[str, Any]) -> list[str]:
    """The report's lines on a whole study on Ray (`benchmarks.study`)."""
    sc = st["schedule"]
    lines = [
        "",
        f"## The {st['study']} study ({st['cells']} cells, {st['workers']} workers)",
        "",
        f"Wall time of the whole `{st['command']}`: {st['wall_s']:.0f} s "
        f"({st['wall_s'] / 60:.1f} min), on an embedded Ray that started in "
        f"{st['ray_startup_s']} s; Ray's own processes peaked at {st['ray_peak_rss_mb']:.0f} MiB "
        f"RSS ({st['ray_processes']} processes), a cell's worker at {st['worker_peak_rss_mb']:.0f} MiB.",
        "",
        f"Cells running at once: at most {sc['most_at_once']}, on average {sc['mean_at_once']:.2f} "
        f"over the {sc['span_s']:.0f} s from the first cell's start to the last one's end; "
        f"minute by minute: {' '.join(map(str, sc['every_minute']))}.",
        "",
        "| depth | cells | seconds per cell (run start to end) | of which training |",
        "|---|---|---|---|",
    ]
    for depth, row in st["per_depth"].items():
        cell, train = row["cell_s"], row["train_s"]
        lines.append(
            f"| {depth} | {cell['n']} | {cell['median']:.1f} [{cell['min']:.1f}–"
            f"{cell['max']:.1f}] | {train['median']:.1f} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        f"# Benchmark ({report['date']})",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']}, "
        f"device {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''}.",
        "",
        "## Train-step throughput (images/s, median [min–max])",
        "",
        "| batch | precision | memory format | images/s |",
        "|---|---|---|---|",
    ]
    for row in report["throughput"]:
        s = row["images_per_s"]
        lines.append(
            f"| {row['batch_size']} | {row['precision']} | {row['memory_format']} | "
            f"{s['median']:,.0f} [{s['min']:,.0f}–{s['max']:,.0f}] |"
        )
    lines += _book_table(report["book_experiment"], report.get("lightning"))
    lines += _fixed_cost_table(report["book_experiment"])
    t = report["tracking_overhead"]
    lines += [
        "",
        "## Per-step tracking overhead (residual, seed preset)",
        "",
        f"Tracked {t['tracked_s']['median']:.2f} s, untracked {t['untracked_s']['median']:.2f} s"
        f" (medians of {t['ratio']['n']}); ratio median {t['ratio']['median']:.3f} "
        f"[{t['ratio']['min']:.3f}–{t['ratio']['max']:.3f}]. Time inside MLflow calls: "
        f"{100 * t['share_in_mlflow_calls']['median']:.2f} % of the tracked training "
        f"[{100 * t['share_in_mlflow_calls']['min']:.2f}–"
        f"{100 * t['share_in_mlflow_calls']['max']:.2f}].",
    ]
    if "time_to_accuracy" in report:
        tta = report["time_to_accuracy"]
        lines += [
            "",
            "## Time to accuracy (full preset)",
            "",
            "Wall seconds from the start of training until test accuracy >= 99.0 %: "
            f"{tta['reached_s']['0.990']}; "
            f">= 99.5 %: {tta['reached_s']['0.995']}; final {tta['final_test_accuracy']:.4f} "
            f"after {tta['epochs']} epochs ({tta['train_time_s']:.1f} s of training).",
        ]
    else:
        lines += ["", "Time to accuracy: not measured (pass `--time-to-accuracy`)."]
    if "study" in report:
        lines += study_section(report["study"])
    if "gpu" not in m:
        lines += ["", "GPU figures: not measured (no GPU on this machine)."]
    return "\n".join(lines) + "\n"
