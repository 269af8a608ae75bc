"""The package keeps readable rooms: no function body over 80 lines anywhere, and no module over
300 lines on the tracking floor (where a reader got lost before Architecture III)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "resnet_mnist"
FUNCTION_LINES = 80
TRACKING_LINES = 300


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines from its first statement after the docstring to its end."""
    body = node.body
    docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    first = body[1] if docstring and len(body) > 1 else body[0]
    return (node.end_lineno or first.lineno) - first.lineno + 1


def test_no_function_body_is_over_80_lines() -> None:
    long = [
        f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({body_lines(node)} lines)"
        for path in sorted(SRC.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and body_lines(node) > FUNCTION_LINES
    ]
    assert long == []


def test_no_tracking_module_is_over_300_lines() -> None:
    long = {
        path.name: n
        for path in sorted((SRC / "tracking").glob("*.py"))
        if (n := len(path.read_text().splitlines())) > TRACKING_LINES
    }
    assert long == {}
