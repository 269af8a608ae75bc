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
    min_confidence: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Answer 'not sure' (with the top guesses) where the likeliest digit is less likely "
            "than this. The probabilities are calibrated: 0.9 means right about 9 times in 10.",
        ),
    ] = None,
    non_digits: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Also show the model N images that are not digits (letters, smudges, textures, "
            "things; made here) and count how often it is sure of a digit (--min-confidence, "
            "default 0.9), before and after its calibration.",
        ),
    ] = None,
    allow_untrusted_model: Annotated[
        bool,
        typer.Option(
            help="Load a model that is not this project's pt2 PyTorch model (it may carry code or "
            "a pickle that runs when loaded)."
        ),
    ] = False,
    data_root: RootOption = None,
) -> None:
    """Classify digit images with a model loaded by URI (the champion by default).

    The probabilities are calibrated on the dev split when the model is logged (a temperature),
    so they say how often the model is right; --min-confidence turns the unlikely answers into
    'not sure'. An unreadable file is reported on its line and the others are still classified;
    the exit code is then 1."""
    from resnet_mnist.inference import images as I

    # What the options alone can refuse is refused before torch and MLflow load.
    paths = list(I.expand(images or []))
    if payload:
        if not paths:
            raise typer.BadParameter("--payload needs image files")
    elif not paths and mnist_test is None and presented is None and non_digits is None:
        raise typer.BadParameter("give image files and/or --mnist-test N / --presented N / --non-digits N")
    elif log and presented is None:
        raise typer.BadParameter("--log writes the scores of --presented: give --presented N too")

    from resnet_mnist.inference import predict as P
    from resnet_mnist.tracking.store import check_store

    if payload:
        digits = [P.load_digit(p, preprocess.value) for p in paths]
        print(json.dumps({"inputs": [d.tolist() for d in digits]}, separators=(",", ":")))
        return
    check_store()
    model = None

    def load():
        nonlocal model
        if model is None:
            model = P.load_model(model_uri, allow_untrusted_model)
        return model

    failed = _classify(paths, load, _Writer(output, number, min_confidence), preprocess.value) if paths else 0
    _scores(
        load,
        model_uri,
        mnist_test,
        presented,
        presentations,
        log,
        preprocess.value,
        data_root,
        min_confidence,
    )
    if non_digits is not None:
        _non_digits(load(), model_uri, non_digits, 0.9 if min_confidence is None else min_confidence)
    if failed:
        raise P.PredictError(f"{failed} of {len(paths)} images could not be classified (see above)")


def _scores(
    load,
    model_uri: str,
    mnist_test: int | None,
    presented: int | None,
    presentations: str | None,
    log: bool,
    preprocess: str,
    data_root: Path | None,
    least: float | None,
) -> None:
    """--mnist-test and --presented (with --log): accuracy on official test digits; with
    --min-confidence, how many of them the model is sure of and how often it is then right."""
    from resnet_mnist.inference import predict as P

    root = str(data_root) if data_root else None
    if mnist_test is not None:
        acc = P.mnist_test_accuracy(load(), mnist_test, root)
        console.print(f"accuracy on the first {mnist_test} MNIST test images: {acc:.4f}")
    if presented is not None:
        names = [n.strip() for n in presentations.split(",") if n.strip()] if presentations else None
        results = P.presented_results(load(), presented, names, preprocess, root, least or 0.0)
        for name, result in results.items():
            line = f"accuracy on the first {presented} test digits as {name}: {result.accuracy:.4f}"
            if least is not None:
                line += (
                    f"; sure (p >= {least:g}) of {result.answered:.1%} of them, "
                    f"{result.sure_accuracy:.2%} of those right"
                )
            console.print(line, highlight=False)
        if log:
            from resnet_mnist.analysis.presented import log_presented

            model_id = log_presented(model_uri, {name: r.confusion for name, r in results.items()})
            console.print(
                f"per-digit scores: evaluation/presented.json and .png of model {model_id} and its run"
            )


def _non_digits(model, uri: str, count: int, min_confidence: float) -> None:
    from resnet_mnist.inference import predict as P

    temperature = P.temperature_of(uri)
    if temperature is None:
        raise P.PredictError(f"{uri} records no temperature (logged before calibration): nothing to compare")
    unsure = P.non_digit_confidence(model, temperature, count, min_confidence)
    console.print(
        f"{count} images that are not digits; the model is sure (p >= {min_confidence:g}) of a digit on:",
        highlight=False,
    )
    for kind, shown in unsure.shown.items():
        before, after = unsure.sure_before.get(kind, 0), unsure.sure_after.get(kind, 0)
        refused = unsure.refused.get(kind, 0)
        console.print(
            f"  {kind:8} {before:4d} of {shown} before calibration, {after:4d} after"
            + (f" ({refused} refused: no ink)" if refused else ""),
            highlight=False,
        )
    total_before, total_after = sum(unsure.sure_before.values()), sum(unsure.sure_after.values())
    console.print(
        f"  all      {total_before:4d} of {count} before ({total_before / count:.1%}), "
        f"{total_after:4d} after ({total_after / count:.1%}); temperature {temperature:.3f}",
        highlight=False,
    )


def _classify(paths: list[Path], load, writer: _Writer, preprocess: str) -> int:
    """Print each file's result as it comes; the number of files that failed."""
    from resnet_mnist.inference import predict as P

    errors = Console(stderr=True, soft_wrap=True, highlight=False)
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
        for result in P.classify_files(load, paths, preprocess, writer.number):
            if result.error:
                failed += 1
                errors.print(f"{result.error}", markup=False)
            writer.write(result)
            progress.advance(task)
    writer.close()
    return failed


class _Writer:
    """One result at a time in the chosen format, streamed (a list of 100,000 is never held).
    A digit less likely than `min_confidence` is 'not sure' ('?' in a number)."""

    def __init__(self, output: Format, number: bool, min_confidence: float | None = None) -> None:
        self.output, self.number, self.first = output, number, True
        self.least = min_confidence or 0.0
        if output is Format.csv:
            self.csv = csv.writer(sys.stdout, lineterminator="\n")
            tops = [c for k in range(1, TOP + 1) for c in (f"top{k}", f"p{k}")]
            self.csv.writerow(
                ["path", "number" if number else "digit", "probability", *tops, "sure", "error"]
            )

    def write(self, result) -> None:
        if self.output is Format.table:
            if not result.error:
                console.print(f"{result.path}: {self._table(result)}", highlight=False, markup=False)
        elif self.output is Format.json:
            sys.stdout.write(("[\n" if self.first else ",\n") + json.dumps(self._record(result)))
        else:
            self.csv.writerow(self._row(result))
        self.first = False

    def close(self) -> None:
        if self.output is Format.json:
            sys.stdout.write("[]\n" if self.first else "\n]\n")
        sys.stdout.flush()

    def _text(self, result) -> str:
        return "".join(str(p.digit) if p.sure(self.least) else "?" for p in result.digits)

    def _table(self, result) -> str:
        if self.number:
            least = min(p.probability for p in result.digits)
            return f"{self._text(result)} (digits {len(result.digits)}, lowest p={least:.3f})"
        (pred,) = result.digits
        if not pred.sure(self.least):
            guesses = ", ".join(f"{d} ({q:.3f})" for d, q in pred.top(TOP))
            return f"not sure (p < {self.least:g}): perhaps {guesses}"
        alternatives = ", ".join(f"{d} ({q:.3f})" for d, q in pred.top(TOP)[1:])
        return f"{pred.digit} (p={pred.probability:.3f})  then {alternatives}"

    def _record(self, result) -> dict:
        if result.error:
            return {"path": str(result.path), "error": result.error}
        if self.number:
            return {
                "path": str(result.path),
                "number": self._text(result),
                "digits": [self._digit(p) for p in result.digits],
            }
        return {"path": str(result.path), **self._digit(result.digits[0])}

    def _digit(self, pred) -> dict:
        sure = pred.sure(self.least)
        return {
            "digit": pred.digit if sure else None,
            "probability": round(pred.probability, 6),
            "sure": sure,
            "top": [{"digit": d, "probability": round(q, 6)} for d, q in pred.top(TOP)],
        }

    def _row(self, result) -> list:
        if result.error:
            return [str(result.path), "", "", *[""] * (2 * TOP), "", result.error]
        if self.number:
            least = min(p.probability for p in result.digits)
            sure = all(p.sure(self.least) for p in result.digits)
            return [str(result.path), self._text(result), f"{least:.6f}", *[""] * (2 * TOP), sure, ""]
        (pred,) = result.digits
        sure = pred.sure(self.least)
        tops = [v for d, q in pred.top(TOP) for v in (d, f"{q:.6f}")]
        return [str(result.path), pred.digit if sure else "", f"{pred.probability:.6f}", *tops, sure, ""]
