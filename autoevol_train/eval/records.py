"""What a benchmark module receives and returns: the run context and the typed result of one benchmark.

Every benchmark (`gsm8k.py`, `humaneval.py`, ...) has ``async def run(config, context) -> BenchmarkResult``;
`run.py` writes the result's records to ``<benchmark>.jsonl`` and the rest to ``results.json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.scheduler import map_in_order
from autoevol_train.progress import Progress

__all__ = ["EvalContext", "BenchmarkResult", "BenchmarkBlock", "EvalResults", "benchmark_block", "benchmark_label"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EvalContext:
    """The stage's LLM pool (roles "model" and "judge"), how many items run at once, the label of the model, and
    the run directory (for a benchmark that leaves more than its records there)."""

    pool: LLMPool
    max_in_flight: int
    model_name: str
    run_dir: Path

    async def ordered(self, items: Sequence[T], fn: Callable[[T], Awaitable[R]], desc: str) -> list[R]:
        """`fn` over items, streamed with a bounded number in flight, with a progress bar; results in item order."""
        with Progress(len(items), desc, self.pool) as bar:
            return await map_in_order(items, fn, self.max_in_flight, lambda: bar.update(1))


@dataclass
class BenchmarkResult:
    """One benchmark's outcome: its metrics (scores and counts), the protocol they were measured under, and
    one record per answered item (per sample for HumanEval), which is what ``<benchmark>.jsonl`` holds, and any
    other file the benchmark leaves in the run directory (name → text).

    `item_scores`: for each score metric, every item's own score on the metric's scale (None where the item has
    none, e.g. an unparsed judgement), in the order of `item_ids`; the metric is their mean. They give the
    metric's standard error and let `compare` pair two arms item by item. `stderr` holds the standard errors
    of metrics without item scores (e.g. one the alpaca-eval package computes). `caveat`: what every table
    showing these numbers must say next to them (e.g. not comparable with a public leaderboard).
    """

    metrics: dict[str, Any]
    protocol: dict[str, Any]
    records: Sequence[Any] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    item_ids: list[str] = field(default_factory=list)
    item_scores: dict[str, list[float | None]] = field(default_factory=dict)
    stderr: dict[str, float | None] = field(default_factory=dict)
    caveat: str | None = None


class ItemScores(TypedDict):
    ids: list[str]
    scores: dict[str, list[float | None]]


class BenchmarkBlock(TypedDict):
    """One benchmark in results.json: a BenchmarkResult without its records (those are <benchmark>.jsonl)."""

    metrics: dict[str, Any]
    stderr: dict[str, float | None]
    protocol: dict[str, Any]
    caveat: str | None
    items: ItemScores


class EvalResults(TypedDict):
    """results.json: what was evaluated, how its prompts were formatted, who judged, and each benchmark."""

    name: str
    model: str
    template: str
    judge: str | None
    benchmarks: dict[str, BenchmarkBlock]


def benchmark_block(result: BenchmarkResult, stderr: dict[str, float | None]) -> BenchmarkBlock:
    return BenchmarkBlock(metrics=result.metrics, stderr=stderr, protocol=result.protocol, caveat=result.caveat,
                          items=ItemScores(ids=result.item_ids, scores=result.item_scores))


def benchmark_label(name: str, block: dict[str, Any]) -> str:
    """A benchmark's name as every table shows it (results.md, compare, the report): with the caveat its
    results.json block carries, if any."""
    return f"{name} ({block['caveat']})" if block.get("caveat") else name
