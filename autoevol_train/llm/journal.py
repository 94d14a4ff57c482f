"""Crash-safe store of every completed LLM call, so a killed run resumes without repeating paid calls.

A call is keyed by a hash of (model, messages, sampling parameters, sample index): the same request asked
again, by a re-run or by another stage, is answered from here, which also makes a resumed run produce the
same output as an uninterrupted one. Failed requests are not stored: a re-run tries them again.

Writes are batched off the event loop: `put` hands the row to a writer thread that commits everything handed
to it in one SQLite transaction every `FLUSH_EVERY_S` (WAL mode), instead of one commit per call on the loop.
A process killed at any moment (kill -9) leaves a readable journal holding every call committed until then;
what it loses is at most the last `FLUSH_EVERY_S` of calls, which a re-run asks again. `flush()` (the pool
calls it when it closes) and `close()` commit everything first. A row waiting for its commit is already
answered by `get`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

from autoevol_train.llm.types import Completion, Messages, Sampling

FLUSH_EVERY_S = 0.05  # what a kill -9 can lose: about this much time's worth of answered calls

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
_INSERT = "INSERT OR IGNORE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def call_key(model: str, messages: Messages, sampling: Sampling, index: int) -> str:
    payload = json.dumps(
        {"model": model, "messages": messages, "sampling": sampling.as_dict(), "index": index},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    return db


class Journal:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self.path)  # reads, on the caller's thread
        self._db.execute(_SCHEMA)
        self._pending: list[tuple] = []  # rows handed over, not yet taken by the writer
        self._unwritten: dict[str, Completion] = {}  # key → completion, until its row is committed
        self._wake = threading.Condition()
        self._flush_now = False
        self._closing = False
        self._failure: BaseException | None = None
        self._writer = threading.Thread(target=self._write_loop, name=f"journal {self.path.name}", daemon=True)
        self._writer.start()

    def get(self, key: str) -> Completion | None:
        with self._wake:
            waiting = self._unwritten.get(key)
        if waiting is not None:
            return replace(waiting, cached=True)
        row = self._db.execute(
            "SELECT text, finish_reason, prompt_tokens, completion_tokens, error FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        return Completion(*row, cached=True)

    def put(self, key: str, role: str, model: str, request: dict, completion: Completion) -> None:
        """Hand a completed call to the writer; committed within `FLUSH_EVERY_S`."""
        row = (key, role, model, json.dumps(request, ensure_ascii=False), completion.text, completion.finish_reason,
               completion.prompt_tokens, completion.completion_tokens, completion.error, time.time())
        with self._wake:
            self._raise_failure()
            self._unwritten.setdefault(key, completion)
            self._pending.append(row)
            if len(self._pending) == 1:
                self._wake.notify_all()

    def flush(self) -> None:
        """Commit every row handed over so far (returns once they are in the database)."""
        with self._wake:
            self._flush_now = True
            self._wake.notify_all()
            self._wake.wait_for(lambda: not self._unwritten or self._failure is not None)
            self._flush_now = False
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"journal {self.path}: writing failed") from self._failure

    def _write_loop(self) -> None:
        db = _connect(self.path)
        try:
            while True:
                with self._wake:
                    self._wake.wait_for(lambda: self._pending or self._closing)
                    if not self._pending:
                        return  # closing, nothing left
                    # Gather a batch: wait out the flush interval unless asked to commit now.
                    self._wake.wait_for(lambda: self._flush_now or self._closing, timeout=FLUSH_EVERY_S)
                    batch, self._pending = self._pending, []
                db.execute("BEGIN")
                db.executemany(_INSERT, batch)
                db.execute("COMMIT")
                with self._wake:
                    for row in batch:
                        self._unwritten.pop(row[0], None)
                    self._wake.notify_all()
        except BaseException as exc:  # a full disk, say: the next put or flush raises it on the caller's side
            with self._wake:
                self._failure = exc
                self._wake.notify_all()
        finally:
            db.close()

    def __len__(self) -> int:
        self.flush()
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        if self._closing:
            return
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        self._writer.join()
        self._db.close()
        self._raise_failure()
