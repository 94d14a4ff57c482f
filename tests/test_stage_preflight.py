"""Every stage checks its endpoints before any work: an unreachable endpoint, a model name the server does not
serve, a server answering every request with HTTP 500 or 401 ends `optimize`, `evolve`, `eval` and `run` with
one line and exit 3, whatever the number of seeds, and leaves nothing but the failed manifest (and the
config) in the run directory.

Through the real CLI in a subprocess, against a real local HTTP server (the scripted OpenAI-compatible test
server: it serves one model, "scripted", or fails as told) and a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoevol_train.llm.openai_backend import PREFLIGHT_ATTEMPTS
from tests.support.scripted_server import Faults, Reply

ROOT = Path(__file__).resolve().parents[1]
SEEDS = 300  # far more than the preflight could ever touch


def _closed_port_url() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _configs(tmp_path: Path, url: str, model: str) -> dict[str, dict]:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Explain topic number {i} simply."}) + "\n"
                             for i in range(SEEDS)))
    gsm8k = tmp_path / "test.jsonl"
    gsm8k.write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": f"#### {i + 1}"}) + "\n"
                             for i in range(SEEDS)))
    role = {"model": model, "base_urls": [url], "max_retries": 1, "retry_initial_s": 0.1}
    evolve = {"seeds": {"path": str(seeds)}, "domain": "chat", "method": "initial",
              "decontam": {"enabled": False}, "llm": {"evol": role}}
    return {
        "optimize": {"seeds": {"path": str(seeds)}, "llm": {"evol": role, "optimizer": role},
                     "dev_size": 20, "batch_size": 5},
        "evolve": evolve,
        "eval": {"model": role, "gsm8k": {"path": str(gsm8k)}},
        "run": {"arms": [{"name": "auto", "method": "initial"}],
                "evolve": {k: v for k, v in evolve.items() if k != "method"}},
    }


def _run(command: str, config: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    path = tmp_path / f"{command}.yaml"
    path.write_text(json.dumps(config))
    out = tmp_path / f"out-{command}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    process = subprocess.run([sys.executable, "-m", "autoevol_train.cli", command, str(path), "--output-dir",
                              str(out)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    return process, out


def _assert_failed_with_nothing_written(process: subprocess.CompletedProcess, command: str, out: Path,
                                        *names: str) -> None:
    assert process.returncode == 3, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    if command == "run":  # the pipeline logs each stage it starts ("[run]     auto/evolve") before the error
        assert all(line.startswith("[run]") for line in lines[:-1]), lines
        lines = lines[-1:]
    [line] = lines
    assert line.startswith(f"autoevol {command}: error: "), line
    assert all(name in line for name in names), line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and all(name in manifest["error"] for name in names)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    if command == "run":  # the pipeline's own record of the stage it was starting, and that stage's manifest
        assert written == {"config.yaml", "manifest.json", "auto/evolve/.stage.json", "auto/evolve/config.yaml",
                           "auto/evolve/manifest.json"}, written
        assert json.loads((out / "auto/evolve/manifest.json").read_text())["status"] == "failed"
    else:
        assert written == {"config.yaml", "manifest.json"}, written


@pytest.mark.parametrize("command", ["optimize", "evolve", "eval", "run"])
def test_unreachable_endpoint_exits_3_with_one_line(tmp_path, command):
    url = _closed_port_url()
    process, out = _run(command, _configs(tmp_path, url, "some-model")[command], tmp_path)
    _assert_failed_with_nothing_written(process, command, out, url, "connection refused")


# fault → (how the server is set up, what the one line names besides the URL, requests the preflight may make)
FAULTS = {
    "wrong_model": ({"served_models": ["scripted"]}, "model 'no-such-model' is not served (served: scripted)", 0),
    "http_500": ({"faults": Faults(error_rate=1.0)}, "HTTP 500", PREFLIGHT_ATTEMPTS),
    "http_401": ({"rule": lambda body, index: Reply("invalid API key", status=401)}, "HTTP 401", 1),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("command", ["optimize", "evolve", "eval", "run"])
def test_server_that_cannot_serve_exits_3_before_any_work(tmp_path, scripted_server, command, fault):
    setup, problem, most_requests = FAULTS[fault]
    server = scripted_server(**setup)
    process, out = _run(command, _configs(tmp_path, server.base_url, "no-such-model")[command], tmp_path)
    _assert_failed_with_nothing_written(process, command, out, server.base_url, problem)
    assert server.counters.requests <= most_requests  # the preflight's own checks, not one request per seed
