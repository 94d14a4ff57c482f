"""Decontamination: n-gram overlap between training rows and benchmark test sets (the paper's Table 10).

A row is compared with GSM8K test (questions and reference answers), HumanEval (prompts and canonical
solutions) and MT-Bench (both turns of every question). Text is lower-cased and split into words (runs of
letters and digits; punctuation and whitespace differences do not hide a copy); a row matches a benchmark
item when they share an n-gram of n words. The paper reports 13-gram and 8-gram matches; both are counted and
listed, and a row with an n-gram match for n >= `remove_at` (13 by default) is removed from the dataset.

Benchmarks come from local files (`path`, as in tests and offline runs) or the hub (`hub`, a dataset name read
with `datasets.load_dataset`). Their n-grams are kept as 64-bit hashes in memory (GSM8K test: ~100k per n).
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import xxhash
from pydantic import Field

from autoevol_train.config import InputError, StrictModel

__all__ = ["BenchmarkSource", "DecontamConfig", "Decontaminator", "Match", "word_tokens"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
Benchmark = Literal["gsm8k", "humaneval", "mt_bench"]


class BenchmarkSource(StrictModel):
    name: Benchmark
    path: str | None = Field(None, description="local file (gsm8k: test.jsonl; humaneval: HumanEval.jsonl.gz; "
                                               "mt_bench: question.jsonl)")
    hub: str | None = Field(None, description="hub dataset name, used when no path is given")
    hub_config: str | None = None
    split: str = "test"


class DecontamConfig(StrictModel):
    """Which benchmarks to check against, which n-gram sizes to count, from which size to remove."""

    enabled: bool = True
    benchmarks: list[BenchmarkSource] = Field(
        default_factory=lambda: [
            BenchmarkSource(name="gsm8k", hub="openai/gsm8k", hub_config="main", split="test"),
            BenchmarkSource(name="humaneval", hub="openai/openai_humaneval", split="test"),
            BenchmarkSource(name="mt_bench", hub="HuggingFaceH4/mt_bench_prompts", split="train"),
        ],
        description="benchmark test sets; defaults are hub names (set `path` to read local copies)")
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


def _read_jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def _benchmark_rows(source: BenchmarkSource) -> Iterator[dict]:
    if source.path is not None:
        path = Path(source.path)
        if not path.is_file():
            raise InputError(f"decontamination: {source.name}: no such file {path}")
        yield from _read_jsonl(path)
        return
    if source.hub is None:
        raise InputError(f"decontamination: {source.name}: set `path` or `hub`")
    import datasets

    try:
        yield from datasets.load_dataset(source.hub, source.hub_config, split=source.split)
    except Exception as exc:  # offline / not found / no such split come as many types
        raise InputError(f"decontamination: {source.name}: cannot load {source.hub!r} ({type(exc).__name__}); "
                         "set `path` to a local copy") from None


def benchmark_texts(source: BenchmarkSource) -> Iterator[tuple[str, str]]:
    """(item id, text) of every benchmark item: what a training row must not contain."""
    for number, row in enumerate(_benchmark_rows(source)):
        if source.name == "gsm8k":
            yield f"test-{number}", f"{row['question']}\n{row['answer']}"
        elif source.name == "humaneval":
            yield str(row["task_id"]), f"{row['prompt']}\n{row['canonical_solution']}"
        else:  # FastChat's question.jsonl has `turns`; HuggingFaceH4/mt_bench_prompts has `prompt` (a list)
            turns = row.get("turns", row.get("prompt"))
            yield str(row.get("question_id", row.get("prompt_id", number))), "\n".join(turns)


class Decontaminator:
    """n-gram index of the configured benchmarks; `matches(row_id, text)` lists the overlaps of one row."""

    def __init__(self, config: DecontamConfig):
        self.config = config
        # per n: ngram hash -> (benchmark, item id), first item wins
        self._index: dict[int, dict[int, tuple[str, str]]] = {n: {} for n in config.ngram_sizes}
        self.items: dict[str, int] = {}
        for source in config.benchmarks if config.enabled else []:
            count = 0
            for item_id, text in benchmark_texts(source):
                count += 1
                words = word_tokens(text)
                for n, index in self._index.items():
                    for h, _ in _ngram_hashes(words, n):
                        index.setdefault(h, (source.name, item_id))
            self.items[source.name] = count

    def matches(self, row_id: str, text: str) -> list[Match]:
        """At most one match per (benchmark item, n): the first shared n-gram."""
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
