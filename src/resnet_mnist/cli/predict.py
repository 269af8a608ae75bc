"""`resnet-mnist predict`: a person's digit images classified by a model loaded by URI."""

from __future__ import annotations

import csv
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from resnet_mnist.cli.common import RootOption, console
from resnet_mnist.tracking.names import CHAMPION_URI

TOP = 3  #: probabilities shown per digit


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


class Preprocess(StrEnum):
    mnist = "mnist"
    resize = "resize"


def predict(
    images: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Image files, folders (their images, recursively) or quoted globs ('d/**/*.png')."
        ),
    ] = None,
    model_uri: Annotated[
        str, typer.Option(help="Any MLflow model URI: models:/NAME@ALIAS, runs:/ID/model, …")
    ] = CHAMPION_URI,
    output: Annotated[
        Format, typer.Option("--format", help="table, or json/csv with the top-3 probabilities.")
    ] = Format.table,
    number: Annotated[
        bool, typer.Option("--number", help="Read each image as a row of digits: a number, left to right.")
    ] = False,
    payload: Annotated[
        bool,
        typer.Option(
            "--payload",
            help="Print the JSON that `mlflow models serve` takes for these images (normalised) and exit.",
        ),
    ] = False,
    preprocess: Annotated[
        Preprocess,
        typer.Option(
            help="mnist: MNIST's normalisation (20 px box, centre of mass); resize: the whole image to 28x28."
        ),
    ] = Preprocess.mnist,
    mnist_test: Annotated[
        int | None, typer.Option(help="Also score the first N official test images.")
    ] = None,
    presented: Annotated[
        int | None,
        typer.Option(
            help="Also score the first N official test digits drawn on pads and photographed on paper."
        ),
    ] = None,
    presentations: Annotated[
        str | None,
        typer.Option(help="Which presentations --presented scores, comma-separated (default: all)."),
    ] = None,
    log: Annotated[
        bool,
        typer.Option(
            "--log",
            help="Write --presented's per-digit table and figure under evaluation/ of the model "
            "(its LoggedModel and its run).",
        ),
    ] = False,
    allow_untrusted_model: Annotated[
        bool,
        typer.Option(
            help="Load a model that is not this project's pt2 PyTorch model (it may carry code or "
            "a pickle that runs when loaded)."
        ),
    ] = False,
    data_root: RootOption = None,
) -> None:
    """Classify digit images with a model loaded by URI (the champion by default). An unreadable
    file is reported on its line and the others are still classified; the exit code is then 1."""
    from resnet_mnist.inference import images as I
    from resnet_mnist.inference import predict as P
    from resnet_mnist.tracking.store import check_store

    paths = list(I.expand(images or []))
    if payload:
        if not paths:
            raise typer.BadParameter("--payload needs image files")
        digits = [P.load_digit(p, preprocess.value) for p in paths]
        print(json.dumps({"inputs": [d.tolist() for d in digits]}, separators=(",", ":")))
        return
    if not paths and mnist_test is None and presented is None:
        raise typer.BadParameter("give image files and/or --mnist-test N / --presented N")
    if log and presented is None:
        raise typer.BadParameter("--log writes the scores of --presented: give --presented N too")
    check_store()
    model = None

    def load():
        nonlocal model
        if model is None:
            model = P.load_model(model_uri, allow_untrusted_model)
        return model

    failed = _classify(paths, load, output, number, preprocess.value) if paths else 0
    root = str(data_root) if data_root else None
    if mnist_test is not None:
        acc = P.mnist_test_accuracy(load(), mnist_test, root)
        console.print(f"accuracy on the first {mnist_test} MNIST test images: {acc:.4f}")
    if presented is not None:
        names = [n.strip() for n in presentations.split(",") if n.strip()] if presentations else None
        confusions = P.presented_confusions(load(), presented, names, preprocess.value, root)
        for name, confusion in confusions.items():
            acc = confusion.trace() / confusion.sum()
            console.print(f"accuracy on the first {presented} test digits as {name}: {acc:.4f}")
        if log:
            from resnet_mnist.analysis.presented import log_presented

            model_id = log_presented(model_uri, confusions)
            console.print(
                f"per-digit scores: evaluation/presented.json and .png of model {model_id} and its run"
            )
    if failed:
        raise P.PredictError(f"{failed} of {len(paths)} images could not be classified (see above)")


def _classify(paths: list[Path], load, output: Format, number: bool, preprocess: str) -> int:
    """Print each file's result as it comes; the number of files that failed."""
    from resnet_mnist.inference import predict as P

    errors = Console(stderr=True, soft_wrap=True, highlight=False)
    writer = _Writer(output, number)
    failed = 0
    with Progress(
        TextColumn("classifying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=True,
        disable=len(paths) <= P.BATCH or not errors.is_terminal,
    ) as progress:
        task = progress.add_task("images", total=len(paths))
        for result in P.classify_files(load, paths, preprocess, number):
            if result.error:
                failed += 1
                errors.print(f"{result.error}", markup=False)
            writer.write(result)
            progress.advance(task)
    writer.close()
    return failed


class _Writer:
    """One result at a time in the chosen format, streamed (a list of 100,000 is never held)."""

    def __init__(self, output: Format, number: bool) -> None:
        self.output, self.number, self.first = output, number, True
        if output is Format.csv:
            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            tops = [c for k in range(1, TOP + 1) for c in (f"top{k}", f"p{k}")]
            self.csv.writerow(["path", "number" if number else "digit", "probability", *tops, "error"])

    def write(self, result) -> None:
        if self.output is Format.table:
            if not result.error:
                console.print(f"{result.path}: {_table(result, self.number)}", highlight=False, markup=False)
        elif self.output is Format.json:
            sys.stdout.write(("[\n" if self.first else ",\n") + json.dumps(_record(result, self.number)))
        else:
            self.csv.writerow(_row(result, self.number))
        self.first = False

    def close(self) -> None:
        if self.output is Format.json:
            sys.stdout.write("[]\n" if self.first else "\n]\n")
        sys.stdout.flush()


def _table(result, number: bool) -> str:
    if number:
        least = min(p.probability for p in result.digits)
        return f"{result.text} (digits {len(result.digits)}, lowest p={least:.3f})"
    (pred,) = result.digits
    alternatives = ", ".join(f"{d} ({q:.3f})" for d, q in pred.top(TOP)[1:])
    return f"{pred.digit} (p={pred.probability:.3f})  then {alternatives}"


def _top(pred) -> list[dict]:
    return [{"digit": d, "probability": round(q, 6)} for d, q in pred.top(TOP)]


def _record(result, number: bool) -> dict:
    if result.error:
        return {"path": str(result.path), "error": result.error}
    if number:
        return {
            "path": str(result.path),
            "number": result.text,
            "digits": [
                {"digit": p.digit, "probability": round(p.probability, 6), "top": _top(p)}
                for p in result.digits
            ],
        }
    (pred,) = result.digits
    return {
        "path": str(result.path),
        "digit": pred.digit,
        "probability": round(pred.probability, 6),
        "top": _top(pred),
    }


def _row(result, number: bool) -> list:
    if result.error:
        return [str(result.path), "", "", *[""] * (2 * TOP), result.error]
    if number:
        least = min(p.probability for p in result.digits)
        return [str(result.path), result.text, f"{least:.6f}", *[""] * (2 * TOP), ""]
    (pred,) = result.digits
    tops = [v for d, q in pred.top(TOP) for v in (d, f"{q:.6f}")]
    return [str(result.path), pred.digit, f"{pred.probability:.6f}", *tops, ""]
