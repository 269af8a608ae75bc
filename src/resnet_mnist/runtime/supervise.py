"""Processes a command starts with its own arguments (torch.distributed ranks, study workers): the
command line they get, and their supervision, so that none outlives the command and a stop
reaches every one of them."""

from __future__ import annotations

import signal
import subprocess
import threading
import time


def drop_options(argv: list[str], with_value: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> list[str]:
    """The command line minus some options (`--name VALUE`, `--name=VALUE`, or a bare flag), for
    the processes a command starts with its own arguments (torchrun ranks, study workers)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0].replace("_", "-")
        if skip:
            skip = False
        elif name in with_value:
            skip = "=" not in arg
        elif name not in flags:
            out.append(arg)
    return out


def supervise(
    commands: list[list[str]],
    envs: list[dict[str, str]],
    stop: threading.Event,
    all_or_none: bool = False,
    grace_s: float = 120.0,
) -> list[int]:
    """Run child processes (torch.distributed ranks, study workers) to the end; return their exit
    codes. No child outlives this call.

    Each child has its own session, so a terminal's Ctrl-C reaches only this process, which
    passes the stop on: the first signal becomes one SIGTERM per child (each stops at its next
    step boundary), a second one a SIGINT (each interrupts at once). With `all_or_none` (ranks
    that wait on each other) a child that fails stops the others. After `grace_s` seconds of
    waiting on stopped children, the rest are killed.
    """
    procs = [
        subprocess.Popen(cmd, env=env, start_new_session=True)
        for cmd, env in zip(commands, envs, strict=True)
    ]
    sent: list[int] = []
    interrupted = False
    deadline = None

    def send(sig: int) -> None:
        sent.append(sig)
        for p in procs:
            if p.poll() is None:
                p.send_signal(sig)

    try:
        while True:
            try:
                if all(p.poll() is not None for p in procs):
                    break
                failed = all_or_none and any(p.returncode not in (None, 0) for p in procs)
                if (stop.is_set() or failed) and not sent:
                    send(signal.SIGTERM)
                    deadline = time.monotonic() + grace_s
                if deadline is not None and time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            except KeyboardInterrupt:
                interrupted = True
                send(signal.SIGINT)
                deadline = time.monotonic() + min(grace_s, 30.0)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    if interrupted:
        raise KeyboardInterrupt("stopped at once")
    return [p.returncode for p in procs]
