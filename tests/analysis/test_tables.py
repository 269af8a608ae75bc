"""A report table comes out as Markdown and CSV with the same cells."""

from __future__ import annotations

import csv
from pathlib import Path

from resnet_mnist.analysis.tables import write_table


def test_markdown_and_csv_hold_the_same_cells(tmp_path: Path) -> None:
    rows = [["plain", "0.9750", "1,234"], ["residual", "0.9850", 'a "quoted", cell']]
    paths = write_table(("variant", "dev acc", "note"), rows, tmp_path / "comparison")

    assert paths == [tmp_path / "comparison.md", tmp_path / "comparison.csv"]
    md = paths[0].read_text().splitlines()
    assert md[:2] == ["| variant | dev acc | note |", "|---|---|---|"]
    assert md[2:] == ["| plain | 0.9750 | 1,234 |", '| residual | 0.9850 | a "quoted", cell |']
    with open(paths[1], newline="") as fh:
        assert list(csv.reader(fh)) == [["variant", "dev acc", "note"], *rows]
