"""Seed datasets in their many shapes → one row schema: ``{id, messages, source, format}``.

Every seed format the paper and its predecessors use is read here and turned into a chat (`messages`: a list
of ``{"role", "content"}`` with roles system / user / assistant), so everything downstream (evolution,
responses, SFT) sees one shape:

| format | fields read | becomes |
|---|---|---|
| alpaca, code_alpaca | instruction, input (optional), output (optional) | user: instruction + input; assistant: output |
| sharegpt | conversations: [{from, value}] (from: human/user, gpt/assistant/chatgpt/bard/bing, system) | the chat |
| messages | messages: [{role, content}] | the chat as it is |
| gsm8k | question, answer | user: question; assistant: answer |
| self_instruct | instruction, instances: [{input, output}] | user: instruction + first instance's input; assistant: its output |

A source is a local ``.json`` (a list, or JSON lines), ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file, or a
hub dataset name (or a local dataset directory, such as one `autoevol evolve` wrote), read by `data/reader.py`
(the one rule for "local file or hub dataset"). Rows are read lazily (JSON lines and parquet row by row, hub
datasets streamed), so a million seeds never sit in memory at once; a ``.json`` array is the exception, `json`
has to parse it whole.

A malformed row raises `InputError` naming the file, the row (1-based) and the field; with
``skip_malformed: true`` it is skipped and counted instead (`LoadReport`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from autoevol_train.config import InputError, StrictModel
from autoevol_train.data.reader import BadRow, is_local, iter_raw_rows

__all__ = ["SeedSource", "LoadReport", "iter_seed_rows", "to_messages", "detect_format", "FORMATS"]

Format = Literal["auto", "alpaca", "code_alpaca", "sharegpt", "messages", "gsm8k", "self_instruct"]
FORMATS = ("alpaca", "code_alpaca", "sharegpt", "messages", "gsm8k", "self_instruct")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                   "system": "system"}


class SeedSource(StrictModel):
    """Where the seeds come from and how to read them."""

    path: str = Field(description="a local .json/.jsonl/.jsonl.gz/.parquet file, or a hub dataset name")
    format: Format = Field("auto", description="row format; auto looks at the first row's fields")
    hub_config: str | None = Field(None, description="hub datasets: the configuration name (e.g. 'main')")
    split: str = Field("train", description="hub datasets: the split to read")
    data_files: str | None = Field(None, description="hub datasets: one file of the repository (e.g. ShareGPT's "
                                                     "ShareGPT_V3_unfiltered_cleaned_split.json)")
    skip_malformed: bool = Field(False, description="skip and count malformed rows instead of failing")
    limit: int | None = Field(None, ge=1, description="read the first this many rows (after skipping)")
    sample: int | None = Field(None, ge=1, description="read a random sample of this many rows (all rows are "
                                                       "read once; the sample keeps file order)")
    seed: int = Field(0, description="random seed of `sample`: the same seed, file and N give the same rows")

    @model_validator(mode="after")
    def _limit_or_sample(self) -> SeedSource:
        if self.limit is not None and self.sample is not None:
            raise ValueError("set either limit (the first N rows) or sample (a random N rows), not both")
        return self

    def is_local(self) -> bool:
        """A file read here; anything else (a hub name, a local dataset directory) goes to `load_dataset`."""
        return is_local(self.path)


@dataclass
class LoadReport:
    """What reading a source did: rows kept, rows skipped and why (only with skip_malformed)."""

    rows: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "skipped": sum(self.skipped.values()), "skipped_by_reason": dict(self.skipped)}


class MalformedRow(Exception):
    """A row that cannot be read in its format; `field` names the offending field."""

    def __init__(self, field_name: str, problem: str):
        super().__init__(f"field '{field_name}': {problem}")
        self.field = field_name


def _text(row: dict[str, Any], name: str, required: bool = True) -> str:
    value = row.get(name)
    if value is None:
        if required:
            raise MalformedRow(name, "missing")
        return ""
    if not isinstance(value, str):
        raise MalformedRow(name, f"expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise MalformedRow(name, "empty")
    return value


def _chat(user: str, assistant: str) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": user}]
    if assistant.strip():
        messages.append({"role": "assistant", "content": assistant})
    return messages


def _join(instruction: str, extra: str) -> str:
    return f"{instruction.strip()}\n\n{extra.strip()}" if extra.strip() else instruction.strip()


def _turns(row: dict[str, Any], name: str, role_key: str, text_key: str, roles: dict[str, str] | None
           ) -> list[dict[str, str]]:
    turns = row.get(name)
    if not isinstance(turns, list) or not turns:
        raise MalformedRow(name, "expected a non-empty list of turns")
    messages = []
    for i, turn in enumerate(turns):
        where = f"{name}[{i}]"
        if not isinstance(turn, dict):
            raise MalformedRow(where, f"expected a mapping, got {type(turn).__name__}")
        raw_role, text = turn.get(role_key), turn.get(text_key)
        role = roles.get(str(raw_role).lower()) if roles is not None else raw_role
        if role not in ("system", "user", "assistant"):
            raise MalformedRow(f"{where}.{role_key}", f"unknown role {raw_role!r}")
        if not isinstance(text, str):
            raise MalformedRow(f"{where}.{text_key}", "missing or not a string")
        messages.append({"role": role, "content": text})
    _check_order(messages, name)
    return messages


def _check_order(messages: list[dict[str, str]], name: str) -> None:
    """system? then user/assistant alternating, starting with a non-empty user turn."""
    body = messages[1:] if messages[0]["role"] == "system" else messages
    if not body:
        raise MalformedRow(name, "no user turn")
    for i, message in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise MalformedRow(name, f"turn {i + 1} is {message['role']!r}, expected {expected!r} "
                                     "(turns must alternate user/assistant)")
        if expected == "user" and not message["content"].strip():
            raise MalformedRow(name, f"turn {i + 1} (user) is empty")


def to_messages(row: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """The chat of one row in format `fmt`; raises `MalformedRow` naming the field."""
    if fmt in ("alpaca", "code_alpaca"):
        return _chat(_join(_text(row, "instruction"), _text(row, "input", False)), _text(row, "output", False))
    if fmt == "gsm8k":
        return _chat(_text(row, "question"), _text(row, "answer", False))
    if fmt == "sharegpt":
        return _turns(row, "conversations", "from", "value", _SHAREGPT_ROLES)
    if fmt == "messages":
        return _turns(row, "messages", "role", "content", None)
    if fmt == "self_instruct":
        instruction = _text(row, "instruction")
        instances = row.get("instances") or [{}]
        if not isinstance(instances, list) or not isinstance(instances[0], dict):
            raise MalformedRow("instances", "expected a list of {input, output} mappings")
        return _chat(_join(instruction, _text(instances[0], "input", False)), _text(instances[0], "output", False))
    raise ValueError(f"unknown format {fmt!r}")


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row's fields say it is in (code Alpaca rows read as alpaca: the shape is the same)."""
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "messages"
    if "instances" in row and "instruction" in row:
        return "self_instruct"
    if "question" in row and "answer" in row:
        return "gsm8k"
    if "instruction" in row:
        return "alpaca"
    return None


def iter_seed_rows(source: SeedSource, report: LoadReport | None = None) -> Iterator[dict[str, Any]]:
    """Rows of `source` as ``{id, messages, source, format}``, lazily, in file order (`limit`: the first N;
    `sample`: a seeded random N, drawn by reservoir sampling so only N rows are ever held).

    `id` is the row's own ``id`` (or ``question_id``/``task_id``) when it has one, else ``<name>-<row>``.
    A source with no usable row is an `InputError` ("no seeds"), not an empty run.
    """
    report = report if report is not None else LoadReport()
    rows = _iter_rows(source, report)
    if source.sample is not None:
        sampled = _reservoir(rows, source.sample, random.Random(source.seed))
        report.rows = len(sampled)  # rows kept: the sample, not every row read
        rows = iter(sampled)
    for row in rows:
        yield row
        if source.limit is not None and report.rows >= source.limit:
            return
    if report.rows == 0:
        skipped = sum(report.skipped.values())
        why = f"all {skipped} rows were malformed and skipped" if skipped else "the source has no rows"
        raise InputError(f"{source.path}: no seeds ({why})")


def _reservoir(rows: Iterator[dict[str, Any]], size: int, rng: random.Random) -> list[dict[str, Any]]:
    """A uniform random sample of `size` rows (Algorithm R), returned in file order."""
    kept: list[tuple[int, dict[str, Any]]] = []
    for number, row in enumerate(rows):
        if number < size:
            kept.append((number, row))
        else:
            slot = rng.randint(0, number)
            if slot < size:
                kept[slot] = (number, row)
    return [row for _, row in sorted(kept, key=lambda pair: pair[0])]


def _iter_rows(source: SeedSource, report: LoadReport) -> Iterator[dict[str, Any]]:
    local = source.is_local()
    raw_rows = iter_raw_rows(source.path, source.hub_config, source.split, source.data_files, what="seed file")
    name = Path(source.path).name if local else source.path
    stem = name.split(".")[0] if local else source.path.replace("/", "_")
    fmt = None if source.format == "auto" else source.format
    for number, raw in enumerate(raw_rows, start=1):
        if raw is None:
            continue
        try:
            if isinstance(raw, BadRow):
                raise MalformedRow("<row>", raw.problem)
            if not isinstance(raw, dict):
                raise MalformedRow("<row>", f"expected a JSON object, got {type(raw).__name__}")
            if fmt is None:
                fmt = detect_format(raw)
                if fmt is None:
                    raise InputError(f"{name}:row {number}: cannot tell the seed format from fields "
                                     f"{sorted(raw)}; set seeds.format to one of {', '.join(FORMATS)}")
            messages = to_messages(raw, fmt)
        except MalformedRow as exc:
            if not source.skip_malformed:
                raise InputError(f"{name}:row {number}: {exc} ({fmt or 'unknown'} format)") from None
            report.skipped[f"{fmt}: {exc.field}"] += 1
            continue
        given = raw.get("id", raw.get("question_id", raw.get("task_id")))
        row_id = str(given) if given not in (None, "") else f"{stem}-{number}"
        report.rows += 1
        yield {"id": row_id, "messages": messages, "source": name, "format": fmt}
