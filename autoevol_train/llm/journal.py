"""Crash-safe store of every completed LLM call, so a killed run resumes without repeating paid calls.

A call is keyed by a hash of (model, messages, sampling parameters, sample index): the same request asked
again, by a re-run or by another stage, is answered from here, which also makes a resumed run produce the
same output as an uninterrupted one. SQLite in WAL mode commits each call on its own; a process killed at any
moment (kill -9) leaves a readable journal holding every call whose commit returned. Failed requests are not
stored: a re-run tries them again.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from autoevol_train.llm.types import Completion, Messages, Sampling

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    error TEXT,
    created REAL NOT NULL
)
"""


def call_key(model: str, messages: Messages, sampling: Sampling, index: int) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "sampling": sampling.as_dict(), "index": index},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> Completion | None:
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, error FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return Completion(*row, cached=True)

    def put(self, key: str, role: str, model: str, request: dict, completion: Completion) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (key, role, model, json.dumps(request, ensure_ascii=False), completion.text,
             completion.finish_reason, completion.prompt_tokens, completion.completion_tokens,
             completion.error, time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()
