"""Dataset writers: sharded parquet that `datasets.load_dataset(dir)` reads, the rejects file, the card.

Layout of a written dataset directory (the Hugging Face hub layout, so the directory can be pushed as is):

    README.md                              dataset card; its YAML header maps splits to parquet files
    data/<split>-00000-of-00003.parquet    rows, `ROW_SCHEMA`, `rows_per_shard` rows per file
    rejects.jsonl                          every dropped row with its reason
    contamination.jsonl                    every benchmark n-gram match (kept or removed)
    stats.json, stats.png                  complexity / diversity statistics

Load it with `load_written_dataset(dir)` (or ``datasets.load_dataset("parquet", data_files=...)``).
``datasets.load_dataset(dir)`` reads the card's header too, but datasets 5.2 caches a local directory by its
*name* alone: two different runs' ``dataset/`` directories come back as whichever was loaded first (even
with ``download_mode="force_redownload"``, which then fails on the recorded split sizes) unless each gets its
own ``cache_dir``. The parquet builder's cache key covers the files themselves.

Parquet files are written with a fixed schema (never inferred from the rows), so shards, splits and runs
always agree on column types, and the same rows give the same files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autoevol_train.config import InputError

__all__ = ["ROW_SCHEMA", "ParquetShardWriter", "JsonlWriter", "card_header", "load_written_dataset"]

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
ROW_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("messages", pa.list_(_MESSAGE)),
    ("seed_id", pa.string()),
    ("seed_index", pa.int64()),
    ("source", pa.string()),
    ("round", pa.int32()),
    ("method_id", pa.string()),
    ("method_name", pa.string()),
    ("evolved_from", pa.list_(pa.string())),
    ("evol_model", pa.string()),
    ("responder_model", pa.string()),
    ("evol_finish_reasons", pa.list_(pa.string())),
    ("response_finish_reasons", pa.list_(pa.string())),
    ("evol_prompt_tokens", pa.int64()),
    ("evol_completion_tokens", pa.int64()),
    ("response_prompt_tokens", pa.int64()),
    ("response_completion_tokens", pa.int64()),
])


class ParquetShardWriter:
    """Rows of one split into ``data/<split>-NNNNN-of-MMMMM.parquet``, `rows_per_shard` rows per file.

    The total is unknown while writing, so shards are written as ``<split>-NNNNN.parquet.tmp`` and renamed
    with their ``-of-MMMMM`` suffix by `close`.
    """

    def __init__(self, directory: Path, split: str, rows_per_shard: int = 50000):
        self.data_dir = directory / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.split = split
        self.rows_per_shard = rows_per_shard
        self.rows = 0
        self._buffer: list[dict[str, Any]] = []
        self._written: list[Path] = []

    def write(self, row: dict[str, Any]) -> None:
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        path = self.data_dir / f"{self.split}-{len(self._written):05d}.parquet.tmp"
        table = pa.Table.from_pylist(self._buffer, schema=ROW_SCHEMA)
        pq.write_table(table, path)
        self._written.append(path)
        self._buffer = []

    def close(self) -> list[Path]:
        if self._buffer or not self._written:  # an empty split still gets one (empty) file with the schema
            self._flush()
        total = len(self._written)
        final = []
        for number, path in enumerate(self._written):
            target = self.data_dir / f"{self.split}-{number:05d}-of-{total:05d}.parquet"
            path.replace(target)
            final.append(target)
        return final


class JsonlWriter:
    """One JSON object per line (rejects, contamination matches)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = open(path, "w", encoding="utf-8")
        self.rows = 0

    def write(self, record: dict[str, Any]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.rows += 1

    def close(self) -> None:
        self._handle.close()


def card_header(splits: list[str], pretty_name: str) -> str:
    """The card's YAML header: `datasets` reads it to map each split to its parquet files."""
    lines = ["---", f"pretty_name: {json.dumps(pretty_name)}", "configs:", "- config_name: default",
             "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: data/{split}-*.parquet"]
    lines += ["tags:", "- instruction-tuning", "- evol-instruct", "- synthetic", "---", ""]
    return "\n".join(lines)


def load_written_dataset(directory: Path, split: str | None = None):
    """The dataset in `directory` as a `datasets.DatasetDict` (or one split), through the parquet builder,
    whose cache key covers the files' paths and modification times (see the module docstring)."""
    import datasets

    rows: dict[str, int] = {}
    for path in sorted((Path(directory) / "data").glob("*.parquet")):
        name = path.name.rsplit("-", 3)[0]  # "<split>-00000-of-00002.parquet"
        rows[name] = rows.get(name, 0) + pq.ParquetFile(path).metadata.num_rows
    empty = [name for name in ([split] if split else rows or ["train"]) if not rows.get(name)]
    if empty:  # datasets 5.2 cannot build an empty split ("corresponds to no data"); pyarrow reads the files
        raise InputError(f"{directory}: split(s) {empty} have no rows (every row was rejected: see rejects.jsonl)")
    data_files = {name: str(Path(directory) / "data" / f"{name}-*.parquet") for name in rows}
    return datasets.load_dataset("parquet", data_files=data_files, split=split)
