"""Hub output through huggingface_hub's real client against a local endpoint (tests/support/fake_hub.py, a test
double reached through HF_ENDPOINT): evolve pushes the dataset with its card and plots, training pushes the model
with its template and generation config (TRL's push_to_hub), eval pushes results.json. The token comes from
HF_TOKEN and appears in no file of the run directory and in no captured log. Stages run as `autoevol` / TRL
processes, as a user runs them, so the client reads HF_ENDPOINT and HF_HUB_OFFLINE=0 at import.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
TOKEN = "hf_FakeTokenForTheLocalEndpoint0123456789"
SEEDS = [{"instruction": f"Name a use of the number {i}.", "output": f"Counting to {i}."} for i in range(5)]


@pytest.fixture
def hub(tmp_path):
    hub = FakeHub(tmp_path / "hub-store", TOKEN).start()
    yield hub
    hub.stop()


def run_cli(args: list[str], hub: FakeHub | None, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`args` in a subprocess pointed at the fake hub, with its own HF_HOME (no token file, no cache shared)."""
    hub_env = {"HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"} if hub else {}
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(cwd / "hf-home"), **hub_env,
                               **env})


def assert_token_nowhere(directory: Path, *logs: str) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    for log in logs:
        assert TOKEN not in log


def evolve_config(tmp_path: Path, base_url: str, **extra) -> Path:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    config = {"seeds": {"path": str(seeds), "format": "alpaca"}, "domain": "chat", "method": "none",
              "llm": {"evol": {"model": "scripted", "base_urls": [base_url]}},
              "dedup": {"near": False}, "decontam": {"enabled": False}, **extra}
    path = tmp_path / "evolve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_evolve_pushes_dataset_card_and_plots_to_a_private_branch(hub, scripted_server, tmp_path):
    import pyarrow.parquet as pq

    server = scripted_server(lambda body, index: "unused")
    config = evolve_config(tmp_path, server.base_url,
                           hub={"repo_id": "alice/evolved-chat", "private": True, "revision": "v1"})
    run = tmp_path / "run"
    done = run_cli([sys.executable, "-m", "autoevol_train.cli", "evolve", str(config), "--output-dir", str(run)],
                   hub, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]

    assert hub.repos["dataset/alice/evolved-chat"] == {"private": True, "branches": {"main", "v1"}}
    assert hub.files("dataset", "alice/evolved-chat", "main") == {}
    pushed = hub.files("dataset", "alice/evolved-chat", "v1")
    local = run / "dataset"
    assert pushed["README.md"] == (local / "README.md").read_bytes()
    assert pushed["stats.png"][:8] == b"\x89PNG\r\n\x1a\n" and "stats.json" in pushed
    parquet = [name for name in pushed if name.endswith(".parquet")]
    assert parquet and all(pushed[name] == (local / name).read_bytes() for name in parquet)
    rows = pq.read_table(io.BytesIO(pushed[parquet[0]])).to_pylist()
    assert [r["messages"][-1]["content"] for r in rows] == [s["output"] for s in SEEDS]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["hub_commit"].startswith(f"{hub.url}/datasets/alice/evolved-chat/commit/")
    assert hub.unknown == []
    assert_token_nowhere(run, done.stdout, done.stderr)


def test_without_a_hub_section_nothing_is_pushed(hub, scripted_server, tmp_path):
    server = scripted_server(lambda body, index: "unused")
    done = run_cli([sys.executable, "-m", "autoevol_train.cli", "evolve", str(evolve_config(tmp_path, server.base_url)),
                    "--output-dir", str(tmp_path / "run")], hub, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert hub.repos == {} and hub.commits == []
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["hub_commit"] is None


def test_a_hub_section_without_hf_token_fails_before_any_work(hub, scripted_server, tmp_path):
    server = scripted_server(lambda body, index: "unused")
    config = evolve_config(tmp_path, server.base_url, hub={"repo_id": "alice/evolved-chat"})
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "autoevol_train.cli", "evolve", str(config), "--output-dir",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(REPO), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"})
    assert done.returncode == 3, done.stderr[-2000:]
    assert "set HF_TOKEN in the environment to push" in done.stderr
    assert server.counters.requests == 0 and not (tmp_path / "run").exists() and hub.commits == []


def test_eval_pushes_results_in_a_folder_named_after_the_model(hub, scripted_server, shared_data, tmp_path):
    server = scripted_server(lambda body, index: "The answer is 18.")
    problems = [json.loads(line) for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:3]]
    test_set = tmp_path / "gsm8k.jsonl"
    test_set.write_text("".join(json.dumps(p) + "\n" for p in problems))
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"name": "arm-a", "model": {"model": "scripted", "base_urls": [server.base_url]},
                                      "gsm8k": {"path": str(test_set)},
                                      "hub": {"repo_id": "alice/results", "private": False}}))
    run = tmp_path / "eval"
    done = run_cli([sys.executable, "-m", "autoevol_train.cli", "eval", str(config), "--output-dir", str(run)],
                   hub, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    pushed = hub.files("dataset", "alice/results")
    assert set(pushed) == {"arm-a/results.json", "arm-a/results.md"}
    assert json.loads(pushed["arm-a/results.json"]) == json.loads((run / "results.json").read_text())
    assert hub.repos["dataset/alice/results"]["private"] is False
    assert_token_nowhere(run, done.stdout, done.stderr)


def test_training_pushes_model_tokenizer_template_and_generation_config(hub, tiny_llama, shared_data, tmp_path):
    from tests.test_train import write_gsm8k_dataset, write_recipe

    dataset = write_gsm8k_dataset(shared_data, tmp_path / "dataset", rows=8)
    out = tmp_path / "model"
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(tiny_llama), dataset_name=str(dataset),
                          output_dir=str(out), max_steps=2, push_to_hub=True, hub_model_id="alice/tiny-sft",
                          hub_private_repo=True)
    done = run_cli([sys.executable, "-m", "autoevol_train.train.sft", "--config", str(recipe)], hub, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    pushed = hub.files("model", "alice/tiny-sft")
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "generation_config.json", "README.md"):
        assert pushed[name] == (out / name).read_bytes(), name
    assert "{% generation %}" in pushed["chat_template.jinja"].decode()
    generation = json.loads(pushed["generation_config.json"])
    from transformers import AutoTokenizer
    assert generation["eos_token_id"] == AutoTokenizer.from_pretrained(out).eos_token_id
    assert hub.repos["model/alice/tiny-sft"]["private"] is True
    assert hub.commits[-1]["summary"] == "End of training"
    assert_token_nowhere(tmp_path / "model", done.stdout, done.stderr)


def test_in_a_pipeline_each_arm_pushes_to_its_own_repositories(tmp_path, monkeypatch):
    """The shared evolve.hub and the recipe's hub_model_id get the arm's name appended (arms must not overwrite
    each other's dataset or model); an arm's own evolve.hub is kept as written."""
    from autoevol_train.config import load_config
    from autoevol_train.pipeline import PipelineConfig, _write_train_recipe, arm_evolve_config

    monkeypatch.chdir(REPO)
    config = load_config(PipelineConfig, REPO / "recipes" / "quickstart" / "pipeline.yaml", [
        "evolve.hub.repo_id=alice/qs-data", "evolve.hub.revision=v2", "train.overrides.push_to_hub=true",
        "train.overrides.hub_model_id=alice/qs-model"])
    repos = {arm.name: arm_evolve_config(config, arm, Path("best_method.txt")).hub for arm in config.arms}
    assert {name: (hub.repo_id, hub.revision) for name, hub in repos.items()} == {
        "seed": ("alice/qs-data-seed", "v2"), "evol-instruct": ("alice/qs-data-evol-instruct", "v2"),
        "auto-evol": ("alice/qs-data-auto-evol", "v2")}
    own = config.arms[0].model_copy(update={"evolve": {"hub": {"repo_id": "bob/seed-set"}}})
    assert arm_evolve_config(config, own, None).hub.repo_id == "bob/seed-set"
    (tmp_path / "seed" / "train").mkdir(parents=True)
    recipe = yaml.safe_load(_write_train_recipe(config.train, tmp_path / "seed" / "evolve" / "dataset",
                                                tmp_path / "seed" / "train", {}).read_text())
    assert recipe["push_to_hub"] is True and recipe["hub_model_id"] == "alice/qs-model-seed"


def test_a_pipeline_with_a_hub_section_and_no_token_fails_before_any_stage(tmp_path, monkeypatch, capsys):
    from autoevol_train.cli import main

    monkeypatch.chdir(REPO)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code = main(["run", "recipes/quickstart/pipeline.yaml", "--output-dir", str(tmp_path / "run"),
                 "eval.hub.repo_id=alice/results"])
    assert code == 3 and "hub.repo_id alice/results: set HF_TOKEN" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
