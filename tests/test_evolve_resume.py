"""kill -9 at random moments, re-run the same `autoevol evolve` command: the final dataset is identical.

The scripted server runs in this process (it outlives the kills, like a real vLLM server would) with a latency
model, so the evolution takes a few seconds. The first kill of each trial is placed by progress, not by the
clock (once a random number of items sits in the part files, so it always lands mid-stream however slow the
machine starts a process); the second at a random moment (start-up, evolution or assembly).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from autoevol_train.data.parts import completed_keys
from tests.support.scripted_server import LatencyModel

REPO = Path(__file__).resolve().parents[1]
COMPARED = ("README.md", "rejects.jsonl", "contamination.jsonl", "stats.json")


def rule(body: dict, index: int) -> str:
    messages = body["messages"]
    last = messages[-1]["content"]
    if messages[0]["role"] == "system":
        return "Sure, what exactly?" if "topic 7." in last else f"An answer to: {last}"
    instruction = last.split("#Given Prompt#:\n", 1)[1].split("\n#", 1)[0]
    return f"{instruction} Add detail {len(instruction) % 5}."


def _command(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "autoevol_train.cli", "evolve", str(config), "--output-dir", str(out)]


def _run(config: Path, out: Path) -> float:
    """Run to completion; returns the seconds it took."""
    start = time.monotonic()
    proc = subprocess.run(_command(config, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return time.monotonic() - start


def _kill_when(config: Path, out: Path, condition: Callable[[], bool]) -> bool:
    """Start the command, SIGKILL it as soon as `condition()` holds; True when it was killed before it could
    finish."""
    proc = subprocess.Popen(_command(config, out), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    return False


def _outputs(dataset: Path) -> dict[str, bytes]:
    files = {name: (dataset / name).read_bytes() for name in COMPARED}
    files.update({f"data/{p.name}": p.read_bytes() for p in sorted((dataset / "data").iterdir())})
    return files


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_identical_dataset(tmp_path, scripted_server):
    server = scripted_server(rule, latency=LatencyModel(median_s=0.02, sigma=0.5, slots=4, seed=1),
                             keep_bodies=False)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Write {i} tips for learning topic {i % 17}.",
                                         "output": "ok"}) + "\n" for i in range(90)))
    config = tmp_path / "evolve.yaml"
    config.write_text(yaml.safe_dump({
        "seeds": {"path": str(seeds)}, "domain": "chat", "method": "evol-instruct", "rounds": 2,
        "max_in_flight": 12, "records_per_part": 7, "rows_per_shard": 40, "decontam": {"enabled": False},
        "llm": {"evol": {"model": "scripted", "base_urls": [server.base_url], "max_concurrency": 8,
                         "preflight": "off"}},  # the rule scripts every request
    }))
    seconds = _run(config, tmp_path / "reference")
    reference = _outputs(tmp_path / "reference" / "dataset")
    rows = sum(1 for name in reference if name.startswith("data/"))
    assert rows >= 2 and b"response_asks_back" in reference["rejects.jsonl"]

    rng = random.Random(1234)
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        items = rng.randint(1, 45)  # of 90
        assert _kill_when(config, out, lambda: len(completed_keys(out / "parts")) >= items), "ended before the kill"
        kill_at = time.monotonic() + rng.uniform(0.1, 1.0) * seconds
        _kill_when(config, out, lambda: time.monotonic() >= kill_at)
        _run(config, out)
        writers = {p.name.split("-")[1] for p in (out / "parts").glob("part-*.jsonl") if p.stat().st_size}
        assert len(writers) >= 2, writers  # items finished by the killed attempt kept, the rest by later ones
        assert _outputs(out / "dataset") == reference, f"trial {trial} differs from the uninterrupted run"
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "completed" and manifest["attempts"] >= 2
