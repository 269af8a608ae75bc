"""The project's own errors (`ProjectError`: a message and an exit code) and how an error from a
library is quoted in one of our messages (its first line, bounded)."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of `exc`'s message (its type name when it has none), at most `limit` long.

    MLflow and SQLAlchemy errors carry pages of context; one line is what a user can act on.
    """
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


class ProjectError(Exception):
    """An expected failure whose message is the whole story for the user: the command prints it
    as one line and exits with `exit_code` (1 unless a subclass says otherwise). Every layer's own
    errors derive from it, so the command line needs no list of them."""

    exit_code = 1
