"""Ctrl-C and SIGTERM: the first asks the Trainer to stop at its next step boundary, a second
interrupts at once, and none ever cuts short the ending of a run.

Python runs signal handlers in the main thread only, whichever thread the signal was delivered to
(MLflow's system-metrics thread included), so a flag checked by the handler is enough to hold a
signal back: inside `shielded()` a signal is recorded, not raised, and the interruption happens
when the outermost shield ends. That is what makes an impatient tenth Ctrl-C harmless: the run is
marked KILLED or FAILED with its reason first, never left RUNNING.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

_held: dict[str, Any] = {"depth": 0, "pending": None}


def _interrupt(signum: int) -> None:
    """What a signal does outside a shield once a stop was already asked for."""
    if _held["depth"] > 0:
        _held["pending"] = signum
        print("ending the run first (its status and reason are being recorded)", file=sys.stderr, flush=True)
        return
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def shielded() -> Iterator[None]:
    """Hold back the interruption a signal would cause until this block (and any shield around
    it) has finished; then raise it. The block itself is never interrupted half-way."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        pending = _held["pending"]
        if _held["depth"] == 0 and pending is not None:
            _held["pending"] = None
            if sys.exc_info()[0] is None:
                raise KeyboardInterrupt(f"signal {pending}")


def safe_point(stop: threading.Event | None) -> None:
    """Where work with no step boundary (writing results, a comparison) may stop: raise the
    stop a signal asked for."""
    if stop is not None and stop.is_set():
        raise KeyboardInterrupt("stopped at a safe point")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set the returned event: the Trainer stops at the next step boundary
    (after saving a resumable checkpoint). A second signal interrupts at once, except inside
    `shielded()`, where it waits for the shield to end."""
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            _interrupt(signum)
            return
        stop.set()
        print("stopping at the next step boundary (again to interrupt at once)", file=sys.stderr, flush=True)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


_owns_process = {"value": False}


def ignore_signals_at_exit() -> None:
    """The command has returned its exit code: teardown (MLflow's threads joined, modules freed)
    is not interrupted, so no late Ctrl-C turns a finished command into a traceback or a death by
    signal. Python resets its own handlers late in finalisation, but leaves an ignored signal
    ignored. Only in the command's own process."""
    if _owns_process["value"]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def leave(code: object) -> NoReturn:
    """End the command's process with `code` (what SystemExit carries) without interpreter
    teardown: everything the command wrote is already in the store (sqlite commits each write;
    a server answered each call) and on disk, so freeing thousands of modules and MLflow's and
    torch's exit hooks would only cost time (about 2 s). Output is flushed first."""
    import logging

    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed pipe: nothing more to say
            pass
    os._exit(code)


def own_process() -> None:
    """This process is the `resnet-mnist` command itself (not a library call in someone else's
    process): once it is ending, it may decide what a signal does."""
    _owns_process["value"] = True
