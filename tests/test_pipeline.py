"""`autoevol run`: the CPU quickstart from a clean clone, stage caching, kill-and-resume, the report in a browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from autoevol_train.cli import main as cli_main

REPO = Path(__file__).resolve().parents[1]
ARMS = ("seed", "evol-instruct", "auto-evol")


def autoevol(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    """`python -m autoevol_train.cli` with `cwd` first on the path: a clone runs its own code."""
    env = {**os.environ, "PYTHONPATH": str(cwd), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "autoevol_train.cli", *args], cwd=cwd, env=env,
                            start_new_session=True, **popen)


def records(run: Path) -> dict[str, dict]:
    return {str(p.parent.relative_to(run)): json.loads(p.read_text()) for p in sorted(run.rglob(".stage.json"))}


def final_numbers(run: Path) -> dict[str, object]:
    """What the report shows per arm: dataset rows and rejects, final training loss, evaluation metrics."""
    numbers: dict[str, object] = {}
    for arm in ARMS:
        stats = json.loads((run / arm / "evolve" / "dataset" / "stats.json").read_text())
        numbers[f"{arm} rows"] = stats["rows"]
        numbers[f"{arm} rejected"] = stats["rejected_by_reason"]
        state = run / arm / "train" / "model" / "trainer_state.json"
        if state.exists():
            numbers[f"{arm} loss"] = [e["loss"] for e in json.loads(state.read_text())["log_history"] if "loss" in e]
        results = run / arm / "eval" / "results.json"
        if results.exists():
            numbers[f"{arm} eval"] = {name: block["metrics"] for name, block in
                                      json.loads(results.read_text())["benchmarks"].items()}
    return numbers


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clean clone of the committed project, with no ../shared beside it (as on a user's machine)."""
    target = tmp_path_factory.mktemp("fresh") / "autoevol-train"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True)
    assert not (target.parent / "shared").exists()
    return target


@pytest.fixture(scope="module")
def quickstart(clone) -> tuple[Path, float]:
    """The README's quickstart command, run in the clean clone: (run directory, wall seconds)."""
    started = time.monotonic()
    process = autoevol(clone, "run", "recipes/quickstart/pipeline.yaml", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=900)
    wall = time.monotonic() - started
    assert process.returncode == 0, err[-4000:]
    report = Path(out.strip().splitlines()[-1])
    assert report == Path("runs/quickstart-pipeline/report.html")
    print(f"quickstart wall time: {wall:.0f} s")
    return clone / "runs" / "quickstart-pipeline", wall


@pytest.mark.slow
def test_quickstart_runs_every_stage_of_every_arm(quickstart):
    run, _ = quickstart
    stages = records(run)
    assert stages["optimize"]["status"] == "completed"
    for arm in ARMS:
        assert stages[f"{arm}/evolve"]["status"] == "completed"
    numbers = final_numbers(run)
    assert numbers["seed rows"] == {"train": 36}
    # An arm whose every evolution failed is reported, not trained; the others are trained and evaluated.
    for arm in ARMS:
        if sum(numbers[f"{arm} rows"].values()):
            assert stages[f"{arm}/train"]["status"] == "completed" and stages[f"{arm}/eval"]["status"] == "completed"
            assert numbers[f"{arm} loss"][-1] < numbers[f"{arm} loss"][0]
        else:
            assert f"{arm}/train" not in stages and sum(numbers[f"{arm} rejected"].values()) == 36
    page = (run / "report.html").read_text()
    assert "Tiny random model" in page and "meaningless" in page
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"


@pytest.mark.slow
def test_report_renders_with_its_images_in_headless_chromium(quickstart, tmp_path):
    run, _ = quickstart
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed (apt-get install chromium; .ci/run installs it)"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    copy = tmp_path / "elsewhere" / "report.html"  # self-contained: it shows its images away from the run
    copy.parent.mkdir()
    shutil.copy(run / "report.html", copy)
    dom = subprocess.run(command + ["--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert 'data-images-ok="true"' in dom
    images = int(dom.split('data-images="')[1].split('"')[0])
    assert images >= 4  # optimisation curve, per-arm data statistics, training loss
    subprocess.run(command + [f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,2000", copy.as_uri()],
                   capture_output=True, timeout=120)
    assert (tmp_path / "report.png").stat().st_size > 20_000


@pytest.mark.slow
def test_changing_evolve_reruns_only_evolve_train_and_eval(quickstart, clone):
    run, _ = quickstart
    before = records(run)
    process = autoevol(clone, "run", "recipes/quickstart/pipeline.yaml", "evolve.seed=7", stderr=subprocess.PIPE,
                       text=True)
    _, err = process.communicate(timeout=900)
    assert process.returncode == 0, err[-4000:]
    after = records(run)
    assert after["optimize"] == before["optimize"] and "[cached]  optimize" in err
    for name, record in after.items():
        if name != "optimize":
            assert record["fingerprint"] != before[name]["fingerprint"], name
            assert record["completed_at"] >= before[name]["completed_at"]
    # Back to the original config: evolve's journal answers every call, the numbers come back exactly.
    process = autoevol(clone, "run", "recipes/quickstart/pipeline.yaml", stderr=subprocess.PIPE, text=True)
    assert process.wait(timeout=900) == 0


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["evolve", "train"])
def test_killed_pipeline_resumes_to_the_same_numbers(quickstart, clone, tmp_path, stage):
    run, _ = quickstart
    reference = final_numbers(run)
    killed = tmp_path / "run"
    process = autoevol(clone, "run", "recipes/quickstart/pipeline.yaml", "--output-dir", str(killed),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = killed / "evol-instruct" / ("evolve" if stage == "evolve" else "train") / ".stage.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # mid-stage
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert json.loads(marker.read_text())["status"] == "running"
    resumed = autoevol(clone, "run", "recipes/quickstart/pipeline.yaml", "--output-dir", str(killed),
                       stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err[-4000:]
    assert f"[resume]  evol-instruct/{stage}" in err
    assert json.dumps(final_numbers(killed)) == json.dumps(reference)  # NaN-safe (win rate of a silent judge)


def test_bad_pipeline_config_is_one_line_and_exit_2(tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text((REPO / "recipes" / "quickstart" / "pipeline.yaml").read_text().replace(
        "method: optimized", "method: magic"))
    assert cli_main(["run", str(config), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoevol run: error: pipeline.yaml: arms[2].method: Input should be")
    assert "\n" not in err and not (tmp_path / "out").exists()


PIPELINES = sorted((REPO / "recipes").glob("*/*/pipeline.yaml"))
DOMAINS = REPO / "recipes" / "domains"


@pytest.mark.parametrize("recipe", PIPELINES, ids=lambda p: p.parent.relative_to(REPO / "recipes").as_posix())
def test_pipeline_recipes_validate_and_match_their_stage_recipes(recipe):
    from autoevol_train.config import load_config
    from autoevol_train.eval.run import EvalConfig
    from autoevol_train.evol.evolve import EvolveConfig
    from autoevol_train.evol.optimize import OptimizeConfig
    from autoevol_train.pipeline import PipelineConfig

    config = load_config(PipelineConfig, recipe)
    domain = recipe.parent.name
    assert [arm.method for arm in config.arms] == ["none", "evol-instruct", "optimized"]
    # The stage sections are the domain's stage recipes (no copies), with this model's overrides only.
    assert config.optimize == load_config(OptimizeConfig, DOMAINS / domain / "optimize.yaml")
    assert config.evolve == load_config(EvolveConfig, DOMAINS / domain / "evolve.yaml",
                                        ["method=none", "method_file=null"])
    gpus = config.eval.model.engine_kwargs["tensor_parallel_size"]
    assert config.eval == load_config(EvalConfig, DOMAINS / domain / "eval.yaml",
                                      [f"model.engine_kwargs.tensor_parallel_size={gpus}"])
    assert config.eval.model.backend in ("vllm", "transformers")  # the trained model is a local directory
    assert config.train is not None and Path(config.train.recipe) == recipe.parent.relative_to(REPO) / "sft.yaml"
    assert "file:" in recipe.read_text() and "seeds:" not in recipe.read_text()


@pytest.mark.parametrize("stage", ["optimize", "evolve", "eval"])
def test_every_domain_stage_recipe_loads_on_its_own(stage):
    from autoevol_train.cli import STAGES
    from autoevol_train.config import load_config

    module, class_name, *_ = STAGES[stage]
    config_class = getattr(__import__(module, fromlist=[class_name]), class_name)
    recipes = sorted(DOMAINS.glob(f"*/{stage}.yaml"))
    assert [p.parent.name for p in recipes] == ["chat", "code", "math"]
    for path in recipes:
        load_config(config_class, path)
    assert not list((REPO / "recipes").glob(f"[!d]*/*/{stage}.yaml"))  # no per-model copies


def test_stage_file_reference_overrides_and_command_line(tmp_path, monkeypatch):
    """`file:` is relative to the pipeline file (from any working directory); overrides merge key by key; a
    command-line override lands beside `file` and applies last."""
    from autoevol_train.config import load_config
    from autoevol_train.pipeline import PipelineConfig

    pipeline = tmp_path / "mine" / "pipeline.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text(yaml.safe_dump({
        "arms": [{"name": "seed", "method": "none"}],
        "evolve": {"file": str(Path("..") / Path(os.path.relpath(DOMAINS, tmp_path)) / "math" / "evolve.yaml"),
                   "overrides": {"rounds": 3, "llm": {"evol": {"max_concurrency": 4}}}}}))
    monkeypatch.chdir(tmp_path)
    config = load_config(PipelineConfig, pipeline, ["evolve.rounds=2", "evolve.dedup.exact=true"])
    assert config.evolve.rounds == 2 and config.evolve.dedup.exact and not config.evolve.dedup.near
    assert config.evolve.llm.evol.max_concurrency == 4 and config.evolve.llm.evol.model == "gpt-4"
    assert config.evolve.seeds.path == "openai/gsm8k"


def test_missing_stage_file_is_one_line_and_exit_2(tmp_path, capsys):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("arms: [{name: seed, method: none}]\nevolve: {file: ../nowhere/evolve.yaml}\n")
    assert cli_main(["run", str(pipeline), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"autoevol run: error: pipeline.yaml: evolve.file: {tmp_path / '../nowhere/evolve.yaml'}: no such file"
    assert not (tmp_path / "out").exists()


def test_every_model_and_domain_has_a_pipeline():
    assert {p.parent.relative_to(REPO / "recipes").as_posix() for p in PIPELINES} == {
        "mistral-7b/chat", "mistral-7b/math", "mixtral-8x7b/chat", "mixtral-8x7b/math",
        "codellama-13b-python/code", "deepseek-coder-33b-base/code", "qwen2.5-7b/math"}


def test_misspelt_training_override_fails_on_load_with_exit_2(tmp_path):
    """The training stage is checked against the installed TRL when the pipeline loads, not after optimize and
    evolve have run: one line naming the key, exit 2, nothing written."""
    started = time.monotonic()
    process = autoevol(REPO, "run", "recipes/quickstart/pipeline.yaml", "train.overrides.learning_rat=1e-5",
                       "--output-dir", str(tmp_path / "out"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
    _, err = process.communicate(timeout=300)
    print(f"failed after {time.monotonic() - started:.1f} s")  # the figure for the issue; no clock assert here
    lines = [line for line in err.splitlines() if "[WARNING]" not in line]  # DeepSpeed's accelerator notice
    assert process.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("autoevol run: error: pipeline.yaml: train.overrides: unknown key(s) 'learning_rat' "
                               "(did you mean 'learning_rate'?)")
    assert not (tmp_path / "out").exists()


def test_training_override_of_the_wrong_type_fails_on_load(tmp_path, capsys):
    assert cli_main(["run", str(REPO / "recipes/quickstart/pipeline.yaml"), "train.overrides.num_train_epochs=many",
                     "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.overrides: " in err and "invalid float value: 'many'" in err and "\n" not in err


def test_bad_arm_evolve_override_is_one_line_and_exit_2(tmp_path, capsys):
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "arms": [{"name": "seed", "method": "none"}, {"name": "deep", "method": "initial", "evolve": {"roundz": 3}}],
        "evolve": {"file": str(DOMAINS / "math" / "evolve.yaml")}}))
    assert cli_main(["run", str(pipeline), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "autoevol run: error: pipeline.yaml: arm deep: evolve: roundz: unknown key (did you mean rounds?)"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_smollm2_quickstart_shows_real_text_for_every_arm(clone, smollm2):
    """The README's first command (the SmolLM2 quickstart) in the clean clone, on the real 135M instruct model: every
    stage runs, real evolutions survive in the Evol-Instruct arm, and the report shows real English for every arm,
    the run's time and what a 135M model can and cannot show. Its time is measured by bench_quickstart.py, not here."""
    process = autoevol(clone, "run", "recipes/quickstart/smollm2.yaml", stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=1800)
    assert process.returncode == 0, err[-4000:]
    assert Path(out.strip().splitlines()[-1]) == Path("runs/quickstart-smollm2/report.html")
    run = clone / "runs" / "quickstart-smollm2"
    stages = records(run)
    assert all(record["status"] == "completed" for record in stages.values())
    assert {"optimize", "seed/eval", "evol-instruct/eval", "auto-evol/evolve"} <= set(stages)
    numbers = final_numbers(run)
    assert numbers["seed rows"] == {"train": 12} and numbers["evol-instruct rows"]["train"] >= 1
    page = (run / "report.html").read_text()
    assert "a 135M-parameter model, plays every role" in page
    assert re.search(r"This <code>autoevol run</code> took \d+ s", page)
    examples = page[page.index("<h2>Examples</h2>"):]
    for arm in ("seed", "evol-instruct"):
        block = examples[examples.index(f"<h3>{arm}</h3>"):]
        answers = block[block.index("The trained model's answers"):].split("</table>")[0]
        cells = re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td></tr>", answers)
        assert cells and all(len(re.findall(r"[A-Za-z]{2,}", cell)) >= 3 for cell in cells), (arm, cells)
