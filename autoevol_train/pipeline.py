"""`autoevol run`: optimize → evolve → train → eval for each arm, cached and resumable, then the report.

One pipeline runs the paper's comparison: the seed data, Evol-Instruct (human-designed methods) and Auto
Evol-Instruct (the optimised method) arms are each evolved, trained and evaluated, and the report puts them
side by side. Each stage runs in its own directory with a fingerprint of its resolved config and of the
stages it depends on. A stage whose fingerprint is unchanged and that completed is not run again; a changed
stage runs again (from a clean directory, keeping its call journal, so identical LLM calls are still free),
and so does everything downstream of it. A killed pipeline re-run with the same command resumes at the stage
it was in, and inside it at the call (journal) or checkpoint (training) where it stopped.

    <output_dir>/tiny-model/ (quickstart)   optimize/   <arm>/{evolve,train,eval}/   report.html
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationInfo, field_validator, model_validator

from autoevol_train.config import ConfigError, InputError, StrictModel, parse_config, read_yaml
from autoevol_train.eval.run import EvalConfig, run_eval
from autoevol_train.evol.evolve import EvolveConfig, run_evolve
from autoevol_train.evol.optimize import OptimizeConfig, run_optimize
from autoevol_train.hub import check_can_push
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.rundir import write_atomic
from autoevol_train.stage import StageRun
from autoevol_train.tracking import ReportTo, TrackerRun, trl_tracking

ArmMethod = Literal["none", "evol-instruct", "initial", "weak", "optimized"]


class ArmConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="directory name of the arm")
    method: ArmMethod = Field(description="none: the seed data; evol-instruct: the human-designed methods; "
                              "initial / weak: an unoptimised method; optimized: optimize's best method")
    evolve: dict[str, Any] = Field({}, description="keys of the shared evolve section this arm replaces, merged "
                                   "key by key (e.g. its filters: the paper filters each arm its own way)")


class TinyModelConfig(StrictModel):
    """Build a tiny random model first (the CPU quickstart: no download, no GPU)."""

    path: str = Field(description="where to build it; roles refer to the same path")
    arch: Literal["llama", "mistral"] = "llama"


class FetchedModelConfig(StrictModel):
    """Fetch a real model without the Hub first (`autoevol models fetch`; cached, free on re-runs)."""

    name: Literal["smollm2-135m-instruct"]
    path: str = Field(description="a link to the converted model in the cache; roles refer to the same path")


# Set per arm by the pipeline (placeholders while the config is checked on load).
_ARM_RECIPE_KEYS = {"dataset_name": "<arm>/evolve/dataset", "output_dir": "<arm>/train/model"}


class TrainStageConfig(StrictModel):
    """The SFT recipe every arm trains with, checked against the installed TRL when the pipeline loads, so a
    misspelt key fails in seconds instead of after optimize and evolve have run."""

    recipe: str = Field(description="SFT recipe (TrlParser YAML); the pipeline sets the dataset and output_dir")
    overrides: dict[str, Any] = Field({}, description="recipe keys to replace for every arm")
    accelerate: bool = Field(True, description="launch with `accelerate launch` and the recipe's accelerate "
                             "config; false: one plain process (CPU quickstart)")

    # An InputError is a ValueError: pydantic reports its one line at the field's key path.
    @field_validator("recipe")
    @classmethod
    def _recipe_keys_are_trl_fields(cls, recipe: str) -> str:
        from autoevol_train.train.sft import check_recipe_keys

        check_recipe_keys(Path(recipe))
        return recipe

    @field_validator("overrides")
    @classmethod
    def _recipe_with_overrides_parses(cls, overrides: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """Keys, then values, through the TrlParser path the training process takes; no model is loaded.
        `use_cpu` is added for the check only: the devices are the training machine's business."""
        from autoevol_train.train.sft import parse_recipe_mapping, read_recipe, unknown_keys

        problem = unknown_keys(overrides)
        if problem:
            raise ValueError(problem)
        if "recipe" in info.data:  # else the recipe's own error is already reported
            recipe = {**read_recipe(Path(info.data["recipe"])), **overrides, **_ARM_RECIPE_KEYS}
            parse_recipe_mapping(recipe, f"{info.data['recipe']} with these overrides", ["--use_cpu", "true"])
        return overrides


DEFAULT_ARMS = [ArmConfig(name="seed", method="none"), ArmConfig(name="evol-instruct", method="evol-instruct"),
                ArmConfig(name="auto-evol", method="optimized")]


class PipelineConfig(StrictModel):
    tiny_model: TinyModelConfig | None = None
    fetch_model: FetchedModelConfig | None = None
    arms: list[ArmConfig] = Field(default_factory=lambda: list(DEFAULT_ARMS), min_length=1)
    optimize: OptimizeConfig | None = Field(None, description="needed when an arm uses method 'optimized'")
    evolve: EvolveConfig = Field(description="shared by every arm; the arm sets method / method_file")
    train: TrainStageConfig | None = None
    eval: EvalConfig | None = Field(None, description="the pipeline sets model.model to each arm's trained model")
    share_engines: bool = Field(False, description="keep in-process engines (backend vllm / transformers) for the "
                                "whole run: each distinct model is loaded once instead of once per stage, but holds "
                                "its memory through training too (a CPU run, or training on devices of its own)")
    report_to: ReportTo = Field("none", description="experiment tracker of every stage and arm (one project named "
                                "after the output directory; training: TRL's report_to): none, trackio or wandb")

    @model_validator(mode="before")
    @classmethod
    def _read_stage_files(cls, data: Any, info: ValidationInfo) -> Any:
        """A stage section is either the stage's config inline or `{file: PATH, overrides: {...}}`: the stage
        recipe (PATH relative to the pipeline file) with `overrides`, then any other key given beside `file`
        (e.g. a command-line `optimize.steps=12`), merged into it key by key."""
        if not isinstance(data, dict):
            return data
        config_dir = Path((info.context or {}).get("config_dir", "."))
        for section in ("optimize", "evolve", "eval"):
            value = data.get(section)
            if isinstance(value, dict) and "file" in value:
                extra = {k: v for k, v in value.items() if k not in ("file", "overrides")}
                data[section] = _merged(_merged(_stage_file(config_dir, section, value["file"]),
                                                value.get("overrides") or {}), extra)
        if isinstance(data.get("evolve"), dict):  # each arm sets the evolve method
            data["evolve"] = {**data["evolve"], "method": "none", "method_file": None}
        return data

    @model_validator(mode="after")
    def _check(self) -> "PipelineConfig":
        names = [arm.name for arm in self.arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        if any(arm.method == "optimized" for arm in self.arms) and self.optimize is None:
            raise ValueError("an arm uses method 'optimized' but there is no optimize section")
        if self.eval is not None and self.train is None:
            raise ValueError("eval evaluates each arm's trained model: it needs a train section")
        for arm in self.arms:  # each arm's own evolve config is checked now, not when its turn comes
            arm_evolve_config(self, arm, Path("best_method.txt"))
        return self


def _stage_file(config_dir: Path, section: str, file: Any) -> dict[str, Any]:
    try:
        return read_yaml(config_dir / str(file), "file")
    except ConfigError as exc:
        raise ValueError(f"{section}.file: {exc}") from None


def _merged(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`base` with `top`'s keys replacing its own; mappings are merged key by key, anything else replaced."""
    merged = dict(base)
    for key, value in top.items():
        both_maps = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merged(merged[key], value) if both_maps else value
    return merged


def _file_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Stage:
    """One stage directory with its `.stage.json` record: fingerprint, status, wall time."""

    def __init__(self, path: Path, name: str, fingerprint: str):
        self.path, self.name, self.fingerprint = path, name, fingerprint
        self._record_path = path / ".stage.json"

    def record(self) -> dict[str, Any]:
        try:
            return json.loads(self._record_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def run(self, work: Callable[[], Any], log: Callable[[str], None]) -> bool:
        """Run `work` unless this exact stage already completed; returns whether it ran."""
        previous = self.record()
        if previous.get("fingerprint") == self.fingerprint and previous.get("status") == "completed":
            log(f"[cached]  {self.name}")
            return False
        if previous and previous.get("fingerprint") != self.fingerprint:
            self._clear_keeping_journal()
        log(f"[resume]  {self.name}" if previous.get("status") == "running" else f"[run]     {self.name}")
        started = time.monotonic()
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self._record_path, json.dumps({"fingerprint": self.fingerprint, "status": "running"}))
        work()
        wall = time.monotonic() - started
        write_atomic(self._record_path, json.dumps(
            {"fingerprint": self.fingerprint, "status": "completed", "wall_s": round(wall, 2),
             "completed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
        return True

    def _clear_keeping_journal(self) -> None:
        """A changed stage starts clean, but identical LLM calls are still answered by its journal."""
        if not self.path.is_dir():
            return
        for child in self.path.iterdir():
            if child.name.startswith("calls.sqlite"):
                continue
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _dataset_rows(dataset_dir: Path) -> int:
    stats = json.loads((dataset_dir / "stats.json").read_text())
    return sum(stats["rows"].values())


def arm_evolve_config(config: PipelineConfig, arm: ArmConfig, best_method: Path | None) -> EvolveConfig:
    """The shared evolve section with the arm's own keys and method."""
    if arm.method == "optimized":
        assert best_method is not None
        method = {"method": "file", "method_file": str(best_method)}
    else:
        method = {"method": arm.method, "method_file": None}
    arm_keys = dict(arm.evolve)
    if config.evolve.hub and "hub" not in arm.evolve:  # one dataset repository per arm: <repo_id>-<arm>
        arm_keys["hub"] = {**config.evolve.hub.model_dump(), "repo_id": f"{config.evolve.hub.repo_id}-{arm.name}"}
    # An arm whose every evolution failed on content is reported, not trained (request errors still fail).
    return parse_config(EvolveConfig, _merged(config.evolve.model_dump(mode="json"),
                                              {"allow_empty": True, **arm_keys, **method}), f"arm {arm.name}: evolve")


# Which filter removed a row, by the reason codes of evol/failures.py, data/decontam.py and data/dedup.py.
# Other rejects (parse failures, request errors, empty answers) are evolutions that did not happen at all.
FILTER_OF_REASON = {
    "response_asks_back": "failure detector F", "response_please_provide": "failure detector F",
    "response_not_possible": "failure detector F", "unchanged": "elimination",
    "copied_prompt_words": "elimination", "short_sorry": "elimination", "punctuation_only": "elimination",
    "equal_to_original": "elimination", "response_truncated": "truncated response",
    "contaminated": "decontamination", "duplicate_of": "deduplication", "near_duplicate_of": "deduplication",
}


def removed_by_filter(stats: dict[str, Any]) -> dict[str, int]:
    """An evolved dataset's rejects (its stats.json) grouped by the filter that removed them."""
    removed: dict[str, int] = {}
    for reason, count in stats.get("rejected_by_reason", {}).items():
        name = FILTER_OF_REASON.get(reason, "not evolved (parse or request failure)")
        removed[name] = removed.get(name, 0) + count
    return removed


def _write_filters(output_dir: Path, config: PipelineConfig, best_method: Path | None) -> None:
    """`filters.json`: per arm, the filters it applied and how many rows each removed."""
    summary = {}
    for arm in config.arms:
        evolve = arm_evolve_config(config, arm, best_method)
        stats = json.loads((output_dir / arm.name / "evolve" / "dataset" / "stats.json").read_text())
        summary[arm.name] = {
            "applied": {"failures": evolve.failures.model_dump(mode="json"),
                        "dedup": evolve.dedup.model_dump(mode="json", include={"exact", "near", "near_threshold"}),
                        "decontam": evolve.decontam.model_dump(mode="json", include={"enabled", "remove_at"})},
            "seeds": stats["seeds"], "rows": sum(stats["rows"].values()), "removed": removed_by_filter(stats)}
    write_atomic(output_dir / "filters.json", json.dumps(summary, indent=2) + "\n")


def _write_train_recipe(config: TrainStageConfig, dataset_dir: Path, stage_dir: Path, tracking: dict[str, Any]
                        ) -> Path:
    """The arm's SFT recipe: the pipeline's recipe with this arm's dataset, output directory and tracker keys."""
    recipe = yaml.safe_load(_file_text(config.recipe)) or {}
    recipe.update(config.overrides)
    recipe.update(tracking)
    recipe.update({"dataset_name": str(dataset_dir), "output_dir": str(stage_dir / "model")})
    if recipe.get("push_to_hub") and recipe.get("hub_model_id"):  # one model repository per arm: <id>-<arm>
        recipe["hub_model_id"] = f"{recipe['hub_model_id']}-{stage_dir.parent.name}"
    path = stage_dir / "recipe.yaml"
    write_atomic(path, yaml.safe_dump(recipe, sort_keys=False))
    return path


def _train(config: TrainStageConfig, recipe: Path, env: dict[str, str]) -> None:
    from autoevol_train.train.launch import launch_training, run_single_process

    code = launch_training(recipe, [], env) if config.accelerate else run_single_process(recipe, [], env)
    if code != 0:
        raise RuntimeError(f"training failed with exit code {code} (recipe {recipe}); re-run to resume from "
                           "the last checkpoint")


def run_pipeline(config: PipelineConfig, output_dir: Path) -> Path:
    """Run every stage of every arm (skipping cached ones) and write the report; returns its path."""
    for target in (config.evolve.hub, config.eval.hub if config.eval else None):
        check_can_push(target)  # a missing HF_TOKEN fails now, not after optimize and training
    with StageRun(output_dir, "run", config) as pipeline_run, SharedEngines() as engines:
        return _run_pipeline_in(pipeline_run, config, engines if config.share_engines else None)


def _run_pipeline_in(pipeline_run: StageRun, config: PipelineConfig, engines: SharedEngines | None) -> Path:
    from autoevol_train.report import build_report

    output_dir, run_dir = pipeline_run.path, pipeline_run.run_dir
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731

    def tracker_run(group: str, name: str) -> TrackerRun:  # one project: the pipeline; a run per arm and stage
        return TrackerRun(config.report_to, project=output_dir.resolve().name, group=group, name=name,
                          directory=output_dir)

    ran: dict[str, bool] = {}
    started = time.monotonic()

    if config.tiny_model is not None:
        from autoevol_train.tiny_model import build_tiny_model
        build_tiny_model(config.tiny_model.path, arch=config.tiny_model.arch)
    if config.fetch_model is not None:
        from autoevol_train.models import fetch_model_to
        fetch_model_to(config.fetch_model.name, config.fetch_model.path)

    best_method: Path | None = None
    optimize_fp = None
    if config.optimize is not None and any(arm.method == "optimized" for arm in config.arms):
        optimize_fp = _fingerprint("optimize", config.optimize.model_dump(mode="json"))
        stage = Stage(output_dir / "optimize", "optimize", optimize_fp)
        ran["optimize"] = stage.run(
            lambda: run_optimize(config.optimize, stage.path, tracker_run("optimize", "optimize"), engines), log)
        best_method = stage.path / "best_method.txt"

    for arm in config.arms:
        evolve_config = arm_evolve_config(config, arm, best_method)
        evolve_fp = _fingerprint("evolve", evolve_config.model_dump(mode="json"),
                                 optimize_fp if arm.method == "optimized" else None)
        evolve = Stage(output_dir / arm.name / "evolve", f"{arm.name}/evolve", evolve_fp)
        ran[evolve.name] = evolve.run(
            lambda: run_evolve(evolve_config, evolve.path, tracker_run(arm.name, evolve.name), engines), log)
        if config.train is None:
            continue
        if _dataset_rows(evolve.path / "dataset") == 0:
            # Every evolution failed (e.g. a tiny random model never writes the method's labels): nothing to
            # train on. The report shows the arm's rejects by reason instead of a model.
            log(f"[skip]    {arm.name}/train, {arm.name}/eval: the evolved dataset has no rows "
                f"(see {evolve.path / 'dataset' / 'rejects.jsonl'})")
            for stale in ("train", "eval"):  # a model of an earlier config must not be reported
                shutil.rmtree(output_dir / arm.name / stale, ignore_errors=True)
            continue
        train_fp = _fingerprint("train", config.train.model_dump(mode="json"), _file_text(config.train.recipe),
                                evolve_fp)
        train = Stage(output_dir / arm.name / "train", f"{arm.name}/train", train_fp)

        def train_work() -> None:
            recipe_keys, env = trl_tracking(tracker_run(arm.name, train.name))
            _train(config.train, _write_train_recipe(config.train, evolve.path / "dataset", train.path, recipe_keys),
                   env)

        ran[train.name] = train.run(train_work, log)
        if config.eval is None:
            continue
        model_dir = train.path / "model"
        eval_config = config.eval.model_copy(update={"name": arm.name, "model": config.eval.model.model_copy(
            update={"model": str(model_dir)})})
        eval_fp = _fingerprint("eval", eval_config.model_dump(mode="json"), train_fp)
        evaluation = Stage(output_dir / arm.name / "eval", f"{arm.name}/eval", eval_fp)
        ran[evaluation.name] = evaluation.run(
            lambda: run_eval(eval_config, evaluation.path, tracker_run(arm.name, evaluation.name), engines), log)

    _write_filters(output_dir, config, best_method)
    report = build_report(output_dir, config, elapsed_s=time.monotonic() - started)
    run_dir.finish(stages_run=ran, report=str(report))
    log(f"report: {report}")
    return report
