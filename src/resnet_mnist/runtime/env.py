"""Environment variables set for the length of a block and then put back as they were: how this
project gives one library call its own settings (MLflow's retry bounds, its pickle switch)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def overridden(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in `os.environ` inside the block; afterwards each variable is restored, or
    removed where it was not set before."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
