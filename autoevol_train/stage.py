"""How every stage runs: RunDir → Journal → LLMPool → preflight → work → finish, in one place.

`optimize`, `evolve`, `eval` and `run` each wrap their work in a `StageRun`:

    with StageRun(output_dir, "evolve", config) as stage:
        ...                                    # checks of the input may still raise InputError here
        async with stage.pool(roles) as pool:  # journal opened, endpoints preflighted
            ...
        stage.run_dir.finish(rows=...)         # the stage's own fields

What a failure leaves behind is decided here, not in each stage:
- bad input (`InputError`) found before any LLM call or output: the directory is left as it was: removed if
  this attempt created it, its config and manifest put back if it existed (a failed attempt must not
  overwrite the config that a resume would compare against);
- anything else (an endpoint, an unusable result, a bug, Ctrl-C): the manifest says `failed` (or
  `interrupted`) with the reason in one line, never `running`; when the stage's pool made no LLM call at
  all (its endpoints failed the preflight), the files the attempt created are removed too: nothing but the
  failed manifest (and the config) is left;
- the journal is closed whatever happens, so every committed call survives for the re-run.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType

from pydantic import BaseModel

from autoevol_train.errors import AutoevolError, InputError
from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.types import RoleConfig
from autoevol_train.rundir import RunDir, write_atomic
from autoevol_train.tracking import Tracker, TrackerRun

# What `RunDir` itself writes on entry: changes to these alone are no work of the attempt.
_BOOKKEEPING = ("config.yaml", "manifest.json")


def _files(path: Path) -> dict[str, tuple[int, int]]:
    """Every file below `path` with its size and modification time (what an attempt may have changed)."""
    if not path.is_dir():
        return {}
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in path.rglob("*") if p.is_file()}


class StageRun:
    """One attempt of one stage in its run directory; a context manager (see the module docstring)."""

    def __init__(self, output_dir: str | Path, command: str, config: BaseModel, tracker_run: TrackerRun = TrackerRun(),
                 engines: SharedEngines | None = None):
        self.path = Path(output_dir)
        self.command = command
        self.config = config
        self._existed = self.path.exists()
        self._before = _files(self.path)
        self._kept = {name: (self.path / name).read_bytes() for name in _BOOKKEEPING
                      if (self.path / name).is_file()}
        self._engines = engines  # in-process engines the pipeline keeps across stages (llm/engines.py)
        self._pools: list[LLMPool] = []
        self._pool_opened = False
        self.run_dir: RunDir
        # The stage's metrics go here (`stage.tracker.log`); nothing is opened unless something is logged.
        self.tracker = Tracker(tracker_run, command, self.path, config.model_dump(mode="json"))

    def __enter__(self) -> StageRun:
        self.run_dir = RunDir(self.path, self.command, self.config)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.tracker.close()
        if exc is None:
            if self.run_dir.manifest["status"] == "running":
                self.run_dir.finish()
            return
        if self._pool_opened and not self._calls_made():  # e.g. an API key missing, an endpoint down
            self._remove_new_files()
        if isinstance(exc, InputError) and self._untouched():
            self._put_back()
            return
        if isinstance(exc, KeyboardInterrupt):
            self.run_dir.finish("interrupted", error="interrupted; re-run the same command to resume")
            return
        first_line = (str(exc).splitlines() or [""])[0]
        reason = first_line if isinstance(exc, AutoevolError) else f"{type(exc).__name__}: {first_line}"
        self.run_dir.finish("failed", error=reason)

    def _calls_made(self) -> bool:
        return any(usage["samples"] for pool in self._pools for usage in pool.usage().values())

    def _untouched(self) -> bool:
        """No LLM call was made and no file but the bookkeeping changed: the attempt did no work."""
        if self._calls_made():
            return False
        changed = {name for name, stamp in _files(self.path).items() if self._before.get(name) != stamp}
        journal = self.run_dir.journal_path.name  # calls.sqlite and its -wal / -shm companions
        return all(name in _BOOKKEEPING or name.startswith(journal) for name in changed)

    def _remove_new_files(self) -> None:
        """What an attempt that made no LLM call wrote before failing (split files, an empty journal) is
        derived from the config alone: remove it, so only the manifest says what happened."""
        for name in set(_files(self.path)) - set(self._before) - set(_BOOKKEEPING):
            (self.path / name).unlink()
        for directory in sorted((p for p in self.path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(directory.iterdir()):
                directory.rmdir()

    def _put_back(self) -> None:
        if not self._existed:
            shutil.rmtree(self.path, ignore_errors=True)
            return
        for name in _BOOKKEEPING:
            if name in self._kept:
                write_atomic(self.path / name, self._kept[name].decode())
            else:
                (self.path / name).unlink(missing_ok=True)
        if self.run_dir.journal_path.name not in self._before:
            for journal_file in self.path.glob(self.run_dir.journal_path.name + "*"):
                journal_file.unlink()

    @asynccontextmanager
    async def pool(self, roles: dict[str, RoleConfig]) -> AsyncIterator[LLMPool]:
        """The stage's LLM pool over its journal, its endpoints preflighted (an `EndpointError` within seconds
        instead of hours of retries); the journal is closed however the block ends."""
        self._pool_opened = True
        journal = Journal(self.run_dir.journal_path)
        try:
            async with LLMPool(roles, journal, self._engines) as pool:
                self._pools.append(pool)
                await pool.preflight()
                yield pool
        finally:
            journal.close()

