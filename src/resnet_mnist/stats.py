"""The statistics of plain vs residual: per-variant means, the difference with a 95 % interval,
and the verdict that says whether it exceeds the noise."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from resnet_mnist import data as D

if TYPE_CHECKING:
    from resnet_mnist.compare import RunSummary

VARIANTS = ("plain", "residual")


class CompareError(RuntimeError):
    """Nothing (or not enough) to compare; the message says what to run."""


@dataclass
class Stats:
    """Per-variant means/stds and the residual-minus-plain difference with a 95 % interval."""

    n: dict[str, int]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    diff: float
    ci: tuple[float, float]
    method: str
    dev_winner: str


METRICS = ("best_dev_accuracy", "test_accuracy", "test_accuracy_full", "test_loss_full")


def statistics(summaries: list[RunSummary], metric: str = "test_accuracy_full") -> Stats:
    """Paired-by-seed t interval when every seed has both variants and n >= 2; otherwise the
    binomial sampling interval of the two test accuracies (test-set noise only: seed-to-seed noise
    is then unmeasured, and the verdict says so)."""
    from scipy import stats as st

    by = {v: [s for s in summaries if s.variant == v] for v in VARIANTS}
    missing = [v for v in VARIANTS if not by[v]]
    if missing:
        have = ", ".join(v for v in VARIANTS if by[v]) or "none"
        raise CompareError(f"need both variants to compare; found only: {have}. Train the "
                           f"missing one (`resnet-mnist train --{'no-' if missing[0] == 'plain' else ''}"
                           "use-residual`) or run `resnet-mnist compare --train-missing`.")
    mean = {v: {k: float(np.mean([getattr(s, k) for s in by[v]])) for k in METRICS} for v in VARIANTS}
    std = {v: {k: float(np.std([getattr(s, k) for s in by[v]], ddof=1)) if len(by[v]) > 1
               else float("nan") for k in METRICS} for v in VARIANTS}
    plain = {s.seed: getattr(s, metric) for s in by["plain"]}
    residual = {s.seed: getattr(s, metric) for s in by["residual"]}
    paired = sorted(set(plain) & set(residual))
    if len(paired) >= 2 and len(paired) == len(plain) == len(residual):
        d = np.array([residual[k] - plain[k] for k in paired])
        half = st.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
        diff, ci, method = float(d.mean()), (float(d.mean() - half), float(d.mean() + half)), \
            f"paired t over {len(d)} seeds"
    else:
        p1, p2 = mean["residual"][metric], mean["plain"][metric]
        n = D.TEST_SIZE if metric.endswith("_full") else None
        if n is None:
            raise CompareError("an unpaired comparison needs the full-test metric")
        se = math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
        diff = p1 - p2
        ci, method = (diff - 1.96 * se, diff + 1.96 * se), "binomial test-set interval, 1 seed"
    dev_winner = max(VARIANTS, key=lambda v: (mean[v]["best_dev_accuracy"], v == "residual"))
    return Stats({v: len(by[v]) for v in VARIANTS}, mean, std, diff, ci, method, dev_winner)


def verdict(s: Stats) -> str:
    """One honest paragraph: who won, by how much, and whether that exceeds the noise."""
    pts = 100 * s.diff
    leader, other = ("residual", "plain") if s.diff >= 0 else ("plain", "residual")
    lo, hi = 100 * s.ci[0], 100 * s.ci[1]
    acc = {v: 100 * s.mean[v]["test_accuracy_full"] for v in VARIANTS}
    text = (f"On the full 10,000-image test set the {leader} network scores "
            f"{acc[leader]:.2f} % against {acc[other]:.2f} % for the {other} one "
            f"(difference residual - plain {pts:+.2f} points, 95 % interval [{lo:+.2f}, {hi:+.2f}], "
            f"{s.method}). ")
    if lo > 0 or hi < 0:
        text += f"The difference is larger than the noise: {leader} wins."
    else:
        text += "The interval includes zero: the difference is within the noise, no winner."
    if "1 seed" in s.method:
        text += (" With one seed per variant the seed-to-seed variation is not measured; "
                 "`--seeds 5` measures it.")
    dev = {v: 100 * s.mean[v]["best_dev_accuracy"] for v in VARIANTS}
    if dev["plain"] == dev["residual"]:
        text += (f" Dev accuracy, which alone chooses the registered model, ties at "
                 f"{dev['plain']:.2f} %; the residual variant is registered.")
    else:
        loser = "plain" if s.dev_winner == "residual" else "residual"
        text += (f" By dev accuracy, which alone chooses the registered model, {s.dev_winner} "
                 f"leads: {dev[s.dev_winner]:.2f} % against {dev[loser]:.2f} %.")
    return text
