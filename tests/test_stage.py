"""StageRun: what a stage's failure leaves in its run directory, and the one "stream, keep order" helper."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from autoevol_train.config import StrictModel
from autoevol_train.errors import EndpointError, InputError
from autoevol_train.llm.scheduler import map_in_order
from autoevol_train.llm.types import OpenAIRole
from autoevol_train.stage import StageRun


class Config(StrictModel):
    value: int = 1


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_success_completes_the_manifest(tmp_path):
    with StageRun(tmp_path / "run", "evolve", Config()) as stage:
        (stage.path / "out.txt").write_text("x")
    assert manifest(tmp_path / "run")["status"] == "completed"


def test_input_error_before_any_work_leaves_no_directory(tmp_path):
    with pytest.raises(InputError):
        with StageRun(tmp_path / "run", "evolve", Config()):
            raise InputError("seeds.jsonl: no seeds (the source has no rows)")
    assert not (tmp_path / "run").exists()


def test_input_error_on_an_existing_directory_leaves_it_as_it_was(tmp_path):
    with StageRun(tmp_path / "run", "evolve", Config(value=1)) as stage:
        (stage.path / "out.txt").write_text("x")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(InputError):
        with StageRun(tmp_path / "run", "evolve", Config(value=2)):
            raise InputError("bad row")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before


def test_missing_api_key_leaves_nothing(tmp_path, monkeypatch):
    """An LLMPool that refuses its roles (an unset API key variable) is bad input: no journal, no directory."""
    monkeypatch.delenv("AUTOEVOL_TEST_UNSET_KEY", raising=False)
    role = OpenAIRole(model="m", base_urls=["http://127.0.0.1:9/v1"], api_key_env="AUTOEVOL_TEST_UNSET_KEY")

    async def work(stage: StageRun) -> None:
        async with stage.pool({"evol": role}):
            pass

    with pytest.raises(InputError, match="AUTOEVOL_TEST_UNSET_KEY"):
        with StageRun(tmp_path / "run", "evolve", Config()) as stage:
            asyncio.run(work(stage))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("error, status, reason", [
    (EndpointError("role evol: http://127.0.0.1:9/v1: connection refused"), "failed",
     "role evol: http://127.0.0.1:9/v1: connection refused"),
    (RuntimeError("a bug\nwith two lines"), "failed", "RuntimeError: a bug"),
    (KeyboardInterrupt(), "interrupted", "interrupted; re-run the same command to resume"),
])
def test_other_failures_mark_the_manifest_and_close_the_journal(tmp_path, error, status, reason):
    async def work(stage: StageRun) -> None:
        async with stage.pool({"evol": OpenAIRole(model="m", preflight="off")}):
            raise error

    with pytest.raises(type(error)):
        with StageRun(tmp_path / "run", "evolve", Config()) as stage:
            asyncio.run(work(stage))
    record = manifest(tmp_path / "run")
    assert (record["status"], record["error"]) == (status, reason)
    assert record["ended_at"]
    # Closed: no WAL left behind, and another connection can take the write lock at once.
    assert not (tmp_path / "run" / "calls.sqlite-wal").exists()
    sqlite3.connect(tmp_path / "run" / "calls.sqlite", timeout=0).execute("BEGIN EXCLUSIVE").close()


def test_input_error_after_work_marks_failed_and_keeps_the_work(tmp_path):
    with pytest.raises(InputError):
        with StageRun(tmp_path / "run", "evolve", Config()) as stage:
            (stage.path / "parts").mkdir()
            (stage.path / "parts" / "part-1.jsonl").write_text("{}\n")
            raise InputError("seeds.jsonl:row 900: field 'instruction': empty")
    assert manifest(tmp_path / "run")["status"] == "failed"
    assert (tmp_path / "run" / "parts" / "part-1.jsonl").exists()


def test_map_in_order_keeps_item_order_whatever_the_finishing_order():
    finished: list[int] = []

    async def slow_first(item: int) -> int:
        await asyncio.sleep(0 if item else 0.05)  # item 0 finishes last
        finished.append(item)
        return item * 10

    async def main() -> list[int]:
        return await map_in_order([0, 1, 2, 3], slow_first, max_in_flight=4, on_result=lambda: None)

    assert asyncio.run(main()) == [0, 10, 20, 30]
    assert finished[-1] == 0


def test_failure_before_any_llm_call_leaves_only_the_failed_manifest(tmp_path):
    """What an attempt wrote before its pool made a call (optimize's split files, an empty journal) goes;
    what an earlier attempt left stays."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "earlier.txt").write_text("kept")

    async def work(stage: StageRun) -> None:
        (stage.path / "methods").mkdir()
        (stage.path / "methods" / "initial.txt").write_text("derived from the config")
        async with stage.pool({"evol": OpenAIRole(model="m", preflight="off")}):
            raise EndpointError("role evol: http://127.0.0.1:9/v1: connection refused")

    with pytest.raises(EndpointError):
        with StageRun(tmp_path / "run", "optimize", Config()) as stage:
            asyncio.run(work(stage))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "earlier.txt", "manifest.json"]
    assert manifest(tmp_path / "run")["status"] == "failed"
