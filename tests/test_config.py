"""Config loading: strict keys and types with the key path in the message, overrides, run directory."""

from __future__ import annotations

import json

import pytest

from autoevol_train.config import ConfigError, StrictModel, dump_config, load_config
from autoevol_train.llm.client import RoleConfig
from autoevol_train.rundir import RunDir


class Roles(StrictModel):
    evol: RoleConfig
    optimizer: RoleConfig | None = None


class StageConfig(StrictModel):
    llm: Roles
    seeds: int = 10
    rounds: list[int] = [1]


def write(tmp_path, text, name="evolve.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "llm:\n  evol:\n    model: m\n    max_concurrency: 8\nseeds: 3\n"


def test_valid_config_with_overrides(tmp_path):
    config = load_config(StageConfig, write(tmp_path, GOOD),
                         ["llm.evol.max_concurrency=128", "llm.optimizer.model=big", "rounds=[1, 2]"])
    assert config.llm.evol.max_concurrency == 128
    assert config.llm.optimizer is not None and config.llm.optimizer.model == "big"
    assert config.rounds == [1, 2] and config.seeds == 3
    assert load_config(StageConfig, write(tmp_path, dump_config(config), "again.yaml")) == config


@pytest.mark.parametrize("text, overrides, message", [
    (GOOD, ["llm.evol.max_concurrency=many"], "evolve.yaml: llm.evol.max_concurrency: expected int, got 'many'"),
    (GOOD + "sedes: 4\n", [], "evolve.yaml: sedes: unknown key"),
    ("llm:\n  evol:\n    model: m\n    temprature: 0.7\n", [], "evolve.yaml: llm.evol.temprature: unknown key"),
    ("llm:\n  evol: {}\n", [], "evolve.yaml: llm.evol.model: required key is missing"),
    (GOOD + "rounds: [1, two]\n", [], "evolve.yaml: rounds[1]: expected int, got 'two'"),
    ("llm:\n  evol:\n    model: m\n    backend: tgi\n", [], "evolve.yaml: llm.evol.backend: Input should be"),
    ("- a\n- b\n", [], "evolve.yaml: expected a mapping at the top level, got list"),
    ("llm: [\n", [], "evolve.yaml: invalid YAML at line"),
    (GOOD, ["seeds"], "evolve.yaml: override 'seeds' is not of the form key.sub=value"),
    (GOOD, ["seeds.x=1"], "evolve.yaml: override seeds.x: seeds is not a mapping"),
])
def test_bad_configs_fail_with_one_line_naming_file_and_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(StageConfig, write(tmp_path, text), overrides)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(StageConfig, tmp_path / "nope.yaml")


def test_run_directory_manifest_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_KEY", "sk-very-secret")
    config = load_config(StageConfig, write(tmp_path, GOOD), ["llm.evol.api_key_env=MY_API_KEY"])
    run = RunDir(tmp_path / "run", "evolve", config)
    run.finish(llm_usage={"evol": {"requests": 3}})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["attempts"] == 1
    assert manifest["versions"]["pydantic"] and manifest["started_at"] and manifest["ended_at"]
    assert manifest["llm_usage"] == {"evol": {"requests": 3}}
    assert "api_key_env: MY_API_KEY" in (tmp_path / "run" / "config.yaml").read_text()
    RunDir(tmp_path / "run", "evolve", config)  # a re-run resumes the same directory
    resumed = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert resumed["attempts"] == 2 and resumed["started_at"] == manifest["started_at"]
    assert resumed["llm_usage"] == {"evol": {"requests": 3}}
    for path in (tmp_path / "run").iterdir():
        assert "sk-very-secret" not in path.read_text()


@pytest.mark.parametrize("setup, message", [
    ("missing", "nope.yaml: no such config file"),
    ("unknown", "optimize.yaml: pool_sise: unknown key"),
    ("wrong_type", "optimize.yaml: llm.evol.max_concurrency: expected int, got 'many'"),
])
def test_cli_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, setup, message):
    import subprocess
    import sys

    from autoevol_train.cli import main

    recipe = tmp_path / "optimize.yaml"
    recipe.write_text("seeds: {path: seeds.jsonl}\nllm:\n  evol: {model: m}\n  optimizer: {model: m}\n"
                      + ("pool_sise: 10\n" if setup == "unknown" else ""))
    args = ["optimize", str(tmp_path / "nope.yaml" if setup == "missing" else recipe)]
    if setup == "wrong_type":
        args.append("llm.evol.max_concurrency=many")
    args += ["--output-dir", str(tmp_path / "out")]
    process = subprocess.run([sys.executable, "-m", "autoevol_train.cli", *args], capture_output=True, text=True)
    assert process.returncode == 2
    [line] = process.stderr.strip().splitlines()
    assert line.startswith("autoevol optimize: error: ") and line.endswith(message)
    assert main(args) == 2
    assert not (tmp_path / "out").exists()


def test_cli_shard_flag():
    from autoevol_train.cli import _shard_overrides

    assert _shard_overrides("1/4") == ["shard_index=1", "num_shards=4"]
    with pytest.raises(ConfigError.__mro__[1], match="expected I/N"):
        _shard_overrides("4/4")
