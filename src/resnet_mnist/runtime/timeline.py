"""Where a command's time and memory go: named marks, each the end of one stage with the
process's peak resident memory so far, written as JSON when `$RESNET_MNIST_TIMELINE` names a
file. `resnet-mnist bench` reads them to report a `train` process's fixed cost item by item and
which stage raised its peak; without the variable a mark costs one dictionary lookup.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "RESNET_MNIST_TIMELINE"
_marks: list[tuple[str, float, float]] = []


def peak_mib() -> float:
    """This process's peak resident memory so far, MiB.

    On Linux, from /proc/self/status (VmHWM): `getrusage`'s ru_maxrss also counts the parent's
    memory at the moment of fork, so a small child of a big process reports the parent's peak.
    """
    import resource
    import sys

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def mark(stage: str) -> None:
    """The stage named `stage` ends now (wall clock, to compare with the process's start)."""
    if ENV in os.environ:
        _marks.append((stage, time.time(), peak_mib()))


def write() -> None:
    """Write the marks to `$RESNET_MNIST_TIMELINE`."""
    target = os.environ.get(ENV)
    if target:
        Path(target).write_text(json.dumps({"marks": _marks}))


def stages(path: Path, started: float, ended: float) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per stage from a written timeline: from `started` (when the parent launched the
    process; the kernel's own start time is only good to a second) or the previous mark to each
    mark, and `teardown` from the last mark to `ended` (when the parent saw the process exit);
    and the peak memory (MiB) at the end of each stage."""
    data = json.loads(path.read_text())
    seconds: dict[str, float] = {}
    peaks: dict[str, float] = {}
    last = started
    for stage, at, peak in data["marks"]:
        seconds[stage] = seconds.get(stage, 0.0) + at - last
        peaks[stage] = peak
        last = at
    seconds["teardown"] = ended - last
    return seconds, peaks
