"""Reading what a user points a config at, with one rule everywhere: a local file or a hub dataset.

Seeds (`data/formats.py`), benchmark test sets (`eval/*.py`), method and prompt files all come through here,
so "is this a file or a hub name", encodings and the errors for a bad row are decided once:

- a path ending in .json, .jsonl, .jsonl.gz, .json.gz or .parquet, or naming an existing file, is a local
  file; anything else (a hub name, a local dataset directory) goes to ``datasets.load_dataset(...,
  streaming=True)``;
- local files are read as UTF-8; a byte that is not names the row (line) and its byte offset;
- JSON lines are read lazily (a ``.json`` array is parsed whole); a line that is not JSON is a `BadRow` the
  caller reports as ``file:row N`` or skips (seeds' ``skip_malformed``).

Prompts shipped with the package are read with `load_prompt`.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from autoevol_train.errors import InputError

__all__ = ["LOCAL_SUFFIXES", "BadRow", "is_local", "iter_raw_rows", "read_rows", "read_text", "load_prompt"]

LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet")


@dataclass
class BadRow:
    """A row that could not be parsed (not JSON, not UTF-8): `problem` says why."""

    problem: str


def is_local(path: str) -> bool:
    """A file read here; anything else (a hub name, a local dataset directory) goes to `load_dataset`."""
    return path.lower().endswith(LOCAL_SUFFIXES) or Path(path).is_file()


def iter_raw_rows(path: str, hub_config: str | None = None, split: str = "train", data_files: str | None = None,
                  what: str = "file") -> Iterator[Any]:
    """The rows of a local file or a hub dataset, lazily, as parsed: a mapping per row, ``None`` for a blank
    line (row numbers stay line numbers), a `BadRow` for a line that cannot be parsed."""
    if is_local(path):
        yield from _iter_local(Path(path), what)
    else:
        yield from _iter_hub(path, hub_config, split, data_files)


def read_rows(path: str, what: str = "file", hub_config: str | None = None, split: str = "train",
              limit: int | None = None) -> list[dict[str, Any]]:
    """Every row (the first `limit`) as a mapping; the first unreadable one is an `InputError` naming the
    file and the row."""
    rows: list[dict[str, Any]] = []
    for number, raw in enumerate(iter_raw_rows(path, hub_config, split, what=what), start=1):
        if raw is None:
            continue
        if isinstance(raw, BadRow):
            raise InputError(f"{path}:row {number}: {raw.problem}")
        if not isinstance(raw, dict):
            raise InputError(f"{path}:row {number}: expected a JSON object, got {type(raw).__name__}")
        rows.append(raw)
        if limit is not None and len(rows) >= limit:
            break
    return rows


def read_text(path: str | Path, what: str = "file") -> str:
    """A user's text file (a method, a prompt template) as UTF-8, or one line saying why not."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    return _decode(path.read_bytes(), str(path))


def _decode(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InputError(f"{name}: line {line}: not UTF-8 text (byte offset {exc.start})") from None


@cache
def load_prompt(package: str, name: str) -> str:
    """A prompt shipped with the package: ``autoevol_train/<package>/prompts/<name>``."""
    return resources.files(f"autoevol_train.{package}").joinpath("prompts", name).read_text(encoding="utf-8")


def _iter_local(path: Path, what: str) -> Iterator[Any]:
    if not path.is_file():
        raise InputError(f"{path}: no such {what}")
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rb") as handle:
        head = handle.read(4096)
        if head.lstrip().startswith(b"["):  # one JSON array: has to be parsed whole
            text = _decode(head + handle.read(), path.name)
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path.name}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
            if not isinstance(rows, list):
                raise InputError(f"{path.name}: expected a JSON array of rows or JSON lines")
            yield from rows
            return
        offset = 0
        for raw_line in _prepend(head, handle):
            start, offset = offset, offset + len(raw_line)
            try:
                line = raw_line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(f"not UTF-8 text (byte offset {start + exc.start} in the file)")
                continue
            if not line.strip():
                yield None
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                yield BadRow(f"invalid JSON ({exc.msg})")


def _prepend(head: bytes, handle: Any) -> Iterator[bytes]:
    """The lines of a binary file whose first `head` bytes were already read."""
    lines = head.split(b"\n")
    tail = lines.pop()  # the (possibly partial) last line of the head
    for line in lines:
        yield line + b"\n"
    yield tail + handle.readline()
    yield from handle


def _iter_hub(path: str, hub_config: str | None, split: str, data_files: str | None) -> Iterator[Any]:
    import datasets

    try:
        dataset = datasets.load_dataset(path, hub_config, split=split, data_files=data_files, streaming=True)
    except Exception as exc:  # datasets raises many types for "not found / offline / no such split"
        raise InputError(f"cannot load {path!r} (hub dataset, split {split!r}): "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    yield from dataset
