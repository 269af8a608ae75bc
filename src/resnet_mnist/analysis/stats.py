"""The statistics of plain vs residual: per-variant means, the difference with a 95 % interval,
and the verdict that says whether it exceeds the noise.

Everything is judged on the full 10,000-image dev split: the book's 200 dev images move by more
than the effect between seeds, and test accuracy must not choose anything it then reports. Test
accuracy is carried along as a held-out figure, and the verdict says that it decides nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from resnet_mnist.analysis.summary import VARIANTS, CompareError, RunSummary
from resnet_mnist.core import data as D


@dataclass
class Stats:
    """Per-variant means/stds and the residual-minus-plain difference of `metric` with a 95 %
    interval."""

    n: dict[str, int]
    mean: dict[str, dict[str, float]]
    std: dict[str, dict[str, float]]
    diff: float
    ci: tuple[float, float]
    method: str
    dev_winner: str
    metric: str = "dev_accuracy_full"


METRICS = (
    "dev_accuracy_full",
    "dev_loss_full",
    "best_dev_accuracy",
    "test_accuracy",
    "test_accuracy_full",
    "test_loss_full",
)
#: How many images each full-split accuracy counts: the n of its binomial interval.
SPLIT_SIZE = {"dev_accuracy_full": D.DEV_SIZE, "test_accuracy_full": D.TEST_SIZE}


@dataclass
class Interval:
    """A mean (or a difference of means) with its 95 % interval over `n` seeds."""

    mean: float
    low: float
    high: float
    n: int

    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    def text(self, fmt: str = ".3f", scale: float = 1.0) -> str:
        if self.n < 2:
            return f"{self.mean * scale:{fmt}} (one seed: no interval)"
        return (
            f"{self.mean * scale:{fmt}} (95 % interval [{self.low * scale:{fmt}}, "
            f"{self.high * scale:{fmt}}], n={self.n})"
        )


def t_interval(values: list[float]) -> Interval:
    """Mean and 95 % t interval (scipy's one-sample t); a single value has none (NaN bounds).
    Differences paired by seed are such values."""
    from scipy import stats as st

    array = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    if len(array) == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(array.mean())
    if len(array) < 2:
        return Interval(mean, math.nan, math.nan, len(array))
    if array.std() == 0:
        return Interval(mean, mean, mean, len(array))
    low, high = st.ttest_1samp(array, 0.0).confidence_interval(0.95)
    return Interval(mean, float(low), float(high), len(array))


def welch_interval(a: list[float], b: list[float]) -> Interval:
    """mean(a) - mean(b) with a Welch 95 % interval (scipy's unequal-variance t; unpaired)."""
    from scipy import stats as st

    x, y = np.asarray(a, float), np.asarray(b, float)
    diff = float(x.mean() - y.mean())
    n = min(len(x), len(y))
    if n < 2:
        return Interval(diff, math.nan, math.nan, n)
    if x.std() == 0 and y.std() == 0:
        return Interval(diff, diff, diff, n)
    low, high = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    return Interval(diff, float(low), float(high), n)


def require_both_variants(variants: Iterable[str]) -> None:
    """A CompareError, saying how to train the missing one, unless both variants are present."""
    present = set(variants)
    missing = [v for v in VARIANTS if v not in present]
    if missing:
        have = ", ".join(v for v in VARIANTS if v in present) or "none"
        raise CompareError(
            f"need both variants to compare; found only: {have}. Train the "
            f"missing one (`resnet-mnist train --{'no-' if missing[0] == 'plain' else ''}"
            "use-residual`) or run `resnet-mnist compare --train-missing`."
        )


def statistics(summaries: list[RunSummary], metric: str = "dev_accuracy_full") -> Stats:
    """The difference residual - plain of `metric` with a 95 % interval.

    Paired t over seeds when every seed has both variants and there are at least two; Welch's t
    when each variant has several runs but their seeds do not pair; with one run per variant the
    binomial sampling interval of the two accuracies (split noise only: seed-to-seed noise is then
    unmeasured, and the verdict says so). The winning variant is the one with the higher mean
    full-dev accuracy (a tie goes to residual).
    """
    require_both_variants(s.variant for s in summaries)
    by = {v: [s for s in summaries if s.variant == v] for v in VARIANTS}
    mean = {v: {k: float(np.mean([getattr(s, k) for s in by[v]])) for k in METRICS} for v in VARIANTS}
    std = {
        v: {
            k: float(np.std([getattr(s, k) for s in by[v]], ddof=1)) if len(by[v]) > 1 else float("nan")
            for k in METRICS
        }
        for v in VARIANTS
    }
    plain = {s.seed: getattr(s, metric) for s in by["plain"]}
    residual = {s.seed: getattr(s, metric) for s in by["residual"]}
    paired = sorted(set(plain) & set(residual))
    if len(paired) >= 2 and len(paired) == len(by["plain"]) == len(by["residual"]):
        pair = t_interval([residual[k] - plain[k] for k in paired])
        diff, ci, method = pair.mean, (pair.low, pair.high), f"paired t over {len(paired)} seeds"
    elif min(len(by[v]) for v in VARIANTS) >= 2:
        a, b = ([getattr(s, metric) for s in by[v]] for v in ("residual", "plain"))
        unpaired = welch_interval(a, b)
        diff, ci = unpaired.mean, (unpaired.low, unpaired.high)
        method = f"Welch t over {len(a)} + {len(b)} unpaired seeds"
    else:
        if metric not in SPLIT_SIZE:
            raise CompareError(f"an unpaired comparison needs a full-split accuracy, not {metric}")
        n = SPLIT_SIZE[metric]
        p1, p2 = mean["residual"][metric], mean["plain"][metric]
        se = math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
        diff = p1 - p2
        ci = (diff - 1.96 * se, diff + 1.96 * se)
        runs = "1 seed" if len(by["plain"]) == len(by["residual"]) == 1 else "unpaired seeds"
        method = f"binomial interval over {n:,} {metric.split('_')[0]} images, {runs}"
    dev_winner = max(VARIANTS, key=lambda v: (mean[v]["dev_accuracy_full"], v == "residual"))
    return Stats({v: len(by[v]) for v in VARIANTS}, mean, std, diff, ci, method, dev_winner, metric)


def _pair(s: Stats, key: str) -> str:
    return ", ".join(f"{v} {100 * s.mean[v][key]:.2f} %" for v in reversed(VARIANTS))


def verdict(s: Stats) -> str:
    """One honest paragraph: who won on dev, by how much, whether that exceeds the noise, and
    what test accuracy (which decides nothing) says."""
    pts = 100 * s.diff
    leader, other = ("residual", "plain") if s.diff >= 0 else ("plain", "residual")
    lo, hi = 100 * s.ci[0], 100 * s.ci[1]
    acc = {v: 100 * s.mean[v][s.metric] for v in VARIANTS}
    text = (
        f"On the full 10,000-image dev split the {leader} network scores "
        f"{acc[leader]:.2f} % against {acc[other]:.2f} % for the {other} one "
        f"(difference residual - plain {pts:+.2f} points, 95 % interval [{lo:+.2f}, {hi:+.2f}], "
        f"{s.method}). "
    )
    if lo > 0 or hi < 0:
        text += f"The difference is larger than the noise: {leader} wins."
    else:
        text += "The interval includes zero: the difference is within the noise, no winner."
    if s.method.startswith("binomial"):
        text += (
            " With one seed per variant (or seeds that do not pair) the seed-to-seed "
            "variation is not measured; `--seeds 5` measures it."
        )
    text += (
        f" Full-dev accuracy alone chooses the registered model: {s.dev_winner} has the "
        "higher mean (a tie goes to residual), and its best run on dev is the candidate."
    )
    text += (
        f" Held out, deciding nothing: on the full 10,000-image test set "
        f"{_pair(s, 'test_accuracy_full')}; on the book's small test subset "
        f"{_pair(s, 'test_accuracy')}. The book's metric, best accuracy on the small dev "
        f"subset that picked each checkpoint: {_pair(s, 'best_dev_accuracy')}."
    )
    return text
