"""What a benchmark module receives and returns: the run context and the typed result of one benchmark.

Every benchmark (`gsm8k.py`, `humaneval.py`, ...) has ``async def run(config, context) -> BenchmarkResult``;
`run.py` writes the result's records to ``<benchmark>.jsonl`` and the rest to ``results.json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.scheduler import map_in_order
from autoevol_train.progress import Progress

__all__ = ["EvalContext", "BenchmarkResult"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EvalContext:
    """The stage's LLM pool (roles "model" and "judge"), how many items run at once, the label of the model."""

    pool: LLMPool
    max_in_flight: int
    model_name: str

    async def ordered(self, items: Sequence[T], fn: Callable[[T], Awaitable[R]], desc: str) -> list[R]:
        """`fn` over items, streamed with a bounded number in flight, with a progress bar; results in item order."""
        with Progress(len(items), desc, self.pool) as bar:
            return await map_in_order(items, fn, self.max_in_flight, lambda: bar.update(1))


@dataclass
class BenchmarkResult:
    """One benchmark's outcome: its metrics (scores and counts), the protocol they were measured under, and
    one record per answered item (per sample for HumanEval), which is what ``<benchmark>.jsonl`` holds, and any
    other file the benchmark leaves in the run directory (name → text)."""

    metrics: dict[str, Any]
    protocol: dict[str, Any]
    records: Sequence[Any] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
