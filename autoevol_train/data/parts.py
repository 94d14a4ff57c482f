"""Crash-safe, append-only store of finished items, read back in seed order.

A long stage (evolving a million seeds) writes each finished item as one JSON line the moment it is done, in
completion order. Every attempt (run, re-run after a kill) writes its own part files, so a line cut short by
a kill -9 is never appended to: readers simply ignore a last line that does not parse. A re-run asks
`completed_keys` which items are already done and skips them; the journal answers the calls of items that
were in flight when the run died.

Reading back, `iter_in_order` sorts each part file in memory (one file at a time: parts are capped at
`records_per_part` lines) into a sorted run on disk, then merges the runs with a heap: the output is in
seed order, every item exactly once (a record written twice, by two attempts, counts once), and memory holds
one part plus one line per run. The last part's run stays in memory, where it was sorted: a run that fits one
part (most runs of up to `records_per_part` items) is never written back and parsed again, which is the whole
cost of the round trip between the last answer and the dataset.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["PartWriter", "completed_keys", "iter_in_order"]


def _read_records(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                return  # cut short by a kill: the item is redone by the next attempt
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                return


def _part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("part-*.jsonl")) if directory.is_dir() else []


def completed_keys(directory: Path, key: str = "seed_index") -> set[int]:
    """Keys of the items whose record is complete in any part file of `directory`."""
    done: set[int] = set()
    for path in _part_files(directory):
        done.update(record[key] for record in _read_records(path))
    return done


class PartWriter:
    """Append records as JSON lines to ``part-<attempt>-<k>.jsonl``, flushed per record, rotated by size."""

    def __init__(self, directory: Path, attempt: int, records_per_part: int = 10000):
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.attempt = attempt
        self.records_per_part = records_per_part
        self._handle: TextIO | None = None
        self._count = 0
        self._part = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._handle is None or self._count >= self.records_per_part:
            self._open_next()
        assert self._handle is not None
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()  # in the OS after every item: a killed process loses nothing written
        self._count += 1

    def _open_next(self) -> None:
        self.close()
        while True:
            path = self.directory / f"part-{self.attempt:04d}-{self._part:05d}.jsonl"
            self._part += 1
            if not path.exists():
                break
        self._handle = open(path, "a", encoding="utf-8")
        self._count = 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_in_order(directories: list[Path], scratch: Path, key: str = "seed_index") -> Iterator[dict[str, Any]]:
    """Every record of the part files under `directories`, sorted by `key`, each key once."""
    scratch.mkdir(parents=True, exist_ok=True)
    runs = []
    records: list[dict[str, Any]] = []
    for number, path in enumerate(p for d in directories for p in _part_files(d)):
        if records:  # the previous part's run, to disk before the next part is read
            run = scratch / f"run-{number:05d}.jsonl"
            with open(run, "w", encoding="utf-8") as handle:
                for record in records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            runs.append(run)
        records = sorted(_read_records(path), key=lambda r: r[key])
    handles = [open(run, encoding="utf-8") for run in runs]
    try:
        streams = [*((json.loads(line) for line in handle) for handle in handles), iter(records)]
        last = None
        for record in heapq.merge(*streams, key=lambda r: r[key]):
            if record[key] != last:
                last = record[key]
                yield record
    finally:
        for handle in handles:
            handle.close()
        for run in runs:
            run.unlink(missing_ok=True)
