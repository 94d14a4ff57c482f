"""How sure a number is: standard errors of the metrics, and paired bootstrap intervals for differences of arms.

A benchmark metric here is the mean of per-item scores (a problem's correctness, a problem's pass@k, a
question's rating, an instruction's verdict), so its standard error is the sample standard deviation of the
item scores over √n, as lm-eval reports it. Two arms answer the same items, so their difference is judged
item by item: the interval is the percentile bootstrap of the mean per-item difference, resampling the items
both arms scored (seeded: the same results always give the same interval). An interval that excludes 0 says
the gain is more than the noise of this test set; one that straddles it says the data cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from autoevol_train.eval.records import benchmark_label

__all__ = ["standard_error", "Difference", "paired_bootstrap", "arm_differences", "RESAMPLES", "LEVEL"]

RESAMPLES = 10_000
LEVEL = 0.95


def standard_error(scores: Sequence[float | None]) -> float:
    """Standard error of the mean of the valid scores (NaN with fewer than two)."""
    valid = np.array([s for s in scores if s is not None], dtype=float)
    if len(valid) < 2:
        return float("nan")
    return float(valid.std(ddof=1) / math.sqrt(len(valid)))


@dataclass(frozen=True)
class Difference:
    """`second` minus `first` on one metric: the mean per-item difference and its bootstrap interval."""

    benchmark: str
    metric: str
    first: str
    second: str
    items: int
    difference: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(first: dict[str, float | None], second: dict[str, float | None], *,
                     resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
                     ) -> tuple[int, float, float, float] | None:
    """(items, mean difference second − first, low, high) over the items both score; None if there are none."""
    common = [item for item, score in first.items() if score is not None and second.get(item) is not None]
    if not common:
        return None
    deltas = np.array([second[item] - first[item] for item in common], dtype=float)  # type: ignore[operator]
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // len(deltas))  # bounded memory: chunk × items indices at a time
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start:start + size] = deltas[rng.integers(0, len(deltas), size=(size, len(deltas)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return len(common), float(deltas.mean()), float(low), float(high)


def _item_scores(block: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """metric → {item id: score} of one results.json benchmark block (empty for results without items)."""
    items = block.get("items") or {}
    return {metric: dict(zip(items["ids"], scores)) for metric, scores in items.get("scores", {}).items()}


def arm_differences(arms: dict[str, dict[str, Any]], *, resamples: int = RESAMPLES, level: float = LEVEL,
                    seed: int = 0) -> list[Difference]:
    """For each pair of arms (later minus earlier, in the given order) and each metric both have item scores
    for, the paired difference with its bootstrap interval."""
    differences = []
    for first, second in combinations(arms, 2):
        for benchmark, block in arms[first]["benchmarks"].items():
            other = arms[second]["benchmarks"].get(benchmark)
            if other is None or benchmark_label(benchmark, block) != benchmark_label(benchmark, other):
                continue  # e.g. one arm scored by alpaca-eval's annotator, the other by our judge
            mine, theirs = _item_scores(block), _item_scores(other)
            for metric in (m for m in mine if m in theirs):
                result = paired_bootstrap(mine[metric], theirs[metric], resamples=resamples, level=level, seed=seed)
                if result is not None:
                    differences.append(Difference(benchmark_label(benchmark, block), metric, first, second, *result))
    return differences
