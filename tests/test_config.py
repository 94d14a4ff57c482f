"""Config loading: strict keys and types with the key path in the message, overrides, run directory."""

from __future__ import annotations

import json

import pytest

from autoevol_train.config import ConfigError, StrictModel, dump_config, load_config
from autoevol_train.llm.types import RoleConfig
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
    ("unknown", "optimize.yaml: pool_sise: unknown key (did you mean pool_size?)"),
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


def test_several_problems_one_line_each_with_the_closest_key(tmp_path):
    from autoevol_train.evol.evolve import EvolveConfig

    recipe = write(tmp_path, "seedz: {path: s.jsonl}\ndomain: maths\nllm:\n  evol: {model: m, max_concurency: 4, "
                             "temprature: 0.7}\n  responder: {modl: r}\nmethod: none\n")
    with pytest.raises(ConfigError) as info:
        load_config(EvolveConfig, recipe)
    assert sorted(str(info.value).splitlines()) == sorted([
        "evolve.yaml: seedz: unknown key (did you mean seeds?)",
        "evolve.yaml: domain: Input should be 'chat', 'math' or 'code' (got 'maths')",
        "evolve.yaml: llm.evol.max_concurency: unknown key (did you mean max_concurrency?)",
        "evolve.yaml: llm.evol.temprature: unknown key (did you mean temperature?)",
        "evolve.yaml: llm.responder.modl: unknown key (did you mean model?)",
    ])
    with pytest.raises(ConfigError, match=r"^evolve.yaml: method 'file' needs method_file"):
        load_config(EvolveConfig, write(tmp_path, "seeds: {path: s.jsonl}\ndomain: math\nllm: {evol: {model: m}}\n"))


def test_yaml_error_names_the_line_and_the_parsers_message(tmp_path):
    text = "llm:\n  evol:\n    model: m\nseeds: 3\nrounds: [1, 2\nextra: 1\n"
    with pytest.raises(ConfigError) as info:
        load_config(StageConfig, write(tmp_path, text))
    assert str(info.value) == ("evolve.yaml: invalid YAML at line 6, column 6: expected ',' or ']', but got ':' "
                               "(while parsing a flow sequence started at line 5)")
    with pytest.raises(ConfigError, match=r"^evolve.yaml: invalid YAML at line 2, column 6: mapping values are not "
                                          r"allowed here$"):
        load_config(StageConfig, write(tmp_path, "seeds: 3\n  llm: 2\n"))


def _cli(*args, cwd=None):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "autoevol_train.cli", *args], capture_output=True, text=True,
                          cwd=cwd or root, env={**__import__("os").environ, "PYTHONPATH": str(root)})


def test_cli_overrides_anywhere_on_the_line(tmp_path):
    recipe = tmp_path / "optimize.yaml"
    recipe.write_text("seeds: {path: seeds.jsonl}\nllm:\n  evol: {model: m}\n  optimizer: {model: m}\n")
    process = _cli("optimize", str(recipe), "--output-dir", str(tmp_path / "out"), "llm.evol.max_concurrency=many",
                   "pool_sise=3")
    assert process.returncode == 2
    assert process.stderr.splitlines() == [
        "autoevol optimize: error: optimize.yaml: llm.evol.max_concurrency: expected int, got 'many'",
        "autoevol optimize: error: optimize.yaml: pool_sise: unknown key (did you mean pool_size?)"]
    assert not (tmp_path / "out").exists()
    assert "unrecognized arguments: --bogus" in _cli("optimize", str(recipe), "--bogus").stderr


def test_every_help_and_version_work():
    for args in (["--help"], ["--version"], ["compare", "--help"], ["config", "--help"], ["train", "--help"],
                 *[[stage, "--help"] for stage in ("optimize", "evolve", "eval", "run")]):
        process = _cli(*args)
        assert process.returncode == 0, (args, process.stderr)
        assert process.stdout.startswith("usage: autoevol" if args != ["--version"] else "autoevol-train ")
    assert "--labels" in _cli("compare", "--help").stdout


def test_train_recipe_help_lists_the_recipe_fields():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for command in ([sys.executable, "-m", "autoevol_train.cli", "train", "recipes/quickstart/sft.yaml", "--help"],
                    [sys.executable, "scripts/run_sft.py", "--help"]):
        process = subprocess.run(command, capture_output=True, text=True, cwd=root,
                                 env={**__import__("os").environ, "PYTHONPATH": str(root)})
        assert process.returncode == 0, process.stderr[-2000:]
        assert "--chat_template_name" in process.stdout and "--learning_rate" in process.stdout


# What a user adds to `autoevol config STAGE`'s output: the seed path, the endpoint's model names, and the
# choices that have no default (domain, the method file, a benchmark, the optimize section the default arms need).
COMPLETIONS = {
    "optimize": ["seeds.path=seeds.jsonl", "llm.evol.model=m", "llm.optimizer.model=m"],
    "evolve": ["seeds.path=seeds.jsonl", "llm.evol.model=m", "domain=math", "method_file=best_method.txt"],
    "eval": ["model.model=m", "gsm8k={}"],
    "run": ["evolve.seeds.path=seeds.jsonl", "evolve.llm.evol.model=m", "evolve.domain=math",
            "optimize={seeds: {path: seeds.jsonl}, llm: {evol: {model: m}, optimizer: {model: m}}}"],
}


@pytest.mark.parametrize("stage", ["optimize", "evolve", "eval", "run"])
def test_config_template_round_trip(tmp_path, stage):
    import importlib

    from autoevol_train.cli import STAGES
    from autoevol_train.config import commented_yaml

    process = _cli("config", stage)
    assert process.returncode == 0, process.stderr
    module_name, config_name, *_ = STAGES[stage]
    cls = getattr(importlib.import_module(module_name), config_name)
    assert process.stdout == commented_yaml(cls)
    template = write(tmp_path, process.stdout, f"{stage}.yaml")
    with pytest.raises(ConfigError, match="required key is missing|expected str, got None"):
        load_config(cls, template)  # as printed, the required keys are still to fill in
    config = load_config(cls, template, COMPLETIONS[stage])
    # Every key is in the template, and what it leaves commented out is the default.
    for key in cls.model_fields:
        assert f"{key}:" in process.stdout
    assert config == cls.model_validate(config.model_dump())
