"""A report's table written twice: Markdown to read (also in the MLflow UI's artifact view), CSV
for tools. The comparison and the study write theirs with it."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


def write_table(columns: Sequence[str], rows: list[list[str]], stem: Path) -> list[Path]:
    """`stem`.md and `stem`.csv with the same header and rows; returns both paths."""
    md, csv_path = stem.with_suffix(".md"), stem.with_suffix(".csv")
    md.write_text(
        "| "
        + " | ".join(columns)
        + " |\n|"
        + "---|" * len(columns)
        + "\n"
        + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    )
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)
    return [md, csv_path]
