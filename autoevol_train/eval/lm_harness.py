"""lm-evaluation-harness tasks as one benchmark: lm-eval runs and scores them, this folds its numbers in.

Why lm-eval and not a rewrite: the paper's Table 9 tasks (ARC, HellaSwag, MMLU, TruthfulQA) are defined by
lm-eval's task files (prompts, shots, answer normalisation, metrics); any reimplementation would give numbers
nobody can compare. So `lm_eval.simple_evaluate` loads the model under test itself (its `hf` backend on the
model directory, or `vllm`) and evaluates the configured tasks, including custom tasks from local YAML files
(`include_path`); this module only turns its output into the project's result: every metric with lm-eval's own
standard error (`<task>/<metric>`, a filter other than "none" appended: `<task>/<metric>/<filter>`), the
protocol (lm-eval version, backend, model_args, shots and task versions), one record per sample and the
per-sample scores (for `autoevol compare`'s paired intervals).

lm-eval is an optional extra (`pip install lm-eval`, see docs/tracking-and-hub.md); it is imported only when
this benchmark runs. The stage's LLM pool is not used: lm-eval needs log-likelihoods of the model's own weights.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, model_validator

from autoevol_train.config import InputError, StrictModel
from autoevol_train.eval.records import BenchmarkResult, EvalContext

__all__ = ["NAME", "Config", "run", "decontamination_texts", "fold"]

NAME = "lm_harness"


class Config(StrictModel):
    """lm-evaluation-harness tasks on the model under test, run and scored by lm-eval (extra `lm-eval`)."""

    name: Literal["lm_harness"] = "lm_harness"
    tasks: list[str] = Field(min_length=1, description="lm-eval task or group names (e.g. the paper's Table 9: "
                             "arc_challenge, hellaswag, mmlu, truthfulqa_mc2) or tasks of include_path")
    include_path: str | None = Field(None, description="directory of custom task YAMLs (e.g. a task over a local "
                                     "jsonl file)")
    num_fewshot: int | dict[str, int] | None = Field(
        None, description="shots for every task, or per task ({arc_challenge: 25, ...}; tasks left out: their own); "
        "default: each task's own")
    limit: PositiveInt | None = Field(None, description="the first N documents of each task only (default: all)")
    backend: Literal["hf", "vllm"] = Field("hf", description="lm-eval's model type loading the weights")
    pretrained: str | None = Field(None, description="model directory (or hub id); default: eval's model.model, "
                                   "which must then be a local directory")
    model_args: dict[str, Any] = Field({}, description="further lm-eval model_args, e.g. {dtype: bfloat16}")
    batch_size: PositiveInt = 1
    device: str | None = Field(None, description="hf backend device, e.g. cpu or cuda:0 (default: lm-eval's)")
    apply_chat_template: bool = Field(False, description="format prompts with the model's chat template (the "
                                      "Open LLM Leaderboard setting of Table 9 uses none)")


    @model_validator(mode="after")
    def _shots_name_tasks(self) -> "Config":
        if isinstance(self.num_fewshot, dict) and set(self.num_fewshot) - set(self.tasks):
            raise ValueError(f"num_fewshot names tasks not in tasks: {sorted(set(self.num_fewshot) - set(self.tasks))}")
        return self

    def shots(self, task: str) -> int | None:
        return self.num_fewshot.get(task) if isinstance(self.num_fewshot, dict) else self.num_fewshot


def _model_dir(config: Config, context: EvalContext) -> str:
    if config.pretrained:
        return config.pretrained
    model = context.pool["model"].config.model
    if not Path(model).is_dir():
        raise InputError(f"lm_harness: the model under test {model!r} is not a local directory (lm-eval loads the "
                         "weights itself); set lm_harness.pretrained")
    return model


def _task_manager(config: Config) -> Any:
    """lm-eval's task index with the configured include path; every configured task must be in it."""
    from lm_eval.tasks import TaskManager

    if config.include_path and not Path(config.include_path).is_dir():
        raise InputError(f"lm_harness.include_path: {config.include_path}: no such directory")
    manager = TaskManager(include_path=config.include_path)
    unknown = [task for task in config.tasks if not manager.match_tasks([task])]
    if unknown:
        raise InputError(f"lm_harness.tasks: unknown lm-eval task(s) {unknown} (include_path: "
                         f"{config.include_path or 'none'})")
    return manager


def _evaluate(config: Config, model_dir: str) -> dict[str, Any]:
    """One `simple_evaluate` per distinct shot count (Table 9 mixes 25, 10, 5 and 0 shots) on one loaded model;
    their outputs merged."""
    import lm_eval
    from lm_eval.api.registry import get_model

    manager = _task_manager(config)
    model = get_model(config.backend).create_from_arg_obj(
        {"pretrained": model_dir, **config.model_args}, {"batch_size": config.batch_size, "device": config.device})
    by_shots: dict[int | None, list[str]] = {}
    for task in config.tasks:
        by_shots.setdefault(config.shots(task), []).append(task)
    merged: dict[str, Any] = {"results": {}, "samples": {}, "n-shot": {}, "versions": {}}
    for shots, tasks in by_shots.items():
        output = lm_eval.simple_evaluate(
            model=model, tasks=tasks, num_fewshot=shots, limit=config.limit,
            apply_chat_template=config.apply_chat_template, task_manager=manager, log_samples=True)
        for key in ("results", "samples", "n-shot", "versions"):
            merged[key].update(output.get(key, {}))
        merged["lm_eval_version"] = output.get("lm_eval_version")
    return merged


def _key(task: str, metric_filter: str) -> str:
    metric, _, filter_name = metric_filter.partition(",")
    return f"{task}/{metric}" if filter_name in ("", "none") else f"{task}/{metric}/{filter_name}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _plain(value: Any) -> Any:
    """A sample field as JSON (lm-eval keeps tuples and numpy scalars in them)."""
    return json.loads(json.dumps(value, default=str))


def fold(output: dict[str, Any], config: Config) -> BenchmarkResult:
    """lm-eval's `simple_evaluate` output as the project's benchmark result (see the module docstring)."""
    metrics: dict[str, Any] = {}
    stderr: dict[str, float | None] = {}
    for task, block in output["results"].items():
        for metric_filter, value in block.items():
            if "," not in metric_filter or "_stderr," in metric_filter:
                continue  # alias, name, sample_len; stderr entries are read beside their metric
            key = _key(task, metric_filter)
            metrics[key] = _number(value)
            metric, _, filter_name = metric_filter.partition(",")
            stderr[key] = _number(block.get(f"{metric}_stderr,{filter_name}"))
    samples = [(task, sample) for task, task_samples in output.get("samples", {}).items() for sample in task_samples]
    per_item = [{_key(task, f"{metric},{sample['filter']}"): _number(sample.get(metric))
                 for metric in sample["metrics"]} for task, sample in samples]
    item_scores = {key: [scores.get(key) for scores in per_item] for key in metrics
                   if any(scores.get(key) is not None for scores in per_item)}
    item_ids = [_key(task, f"{sample['doc_id']},{sample['filter']}") for task, sample in samples]
    records = [{"task": task, "doc_id": sample["doc_id"], "filter": sample["filter"],
                "target": _plain(sample["target"]), "filtered_resps": _plain(sample["filtered_resps"]),
                **{metric: _plain(sample.get(metric)) for metric in sample["metrics"]}} for task, sample in samples]
    protocol = {
        "harness": f"lm-eval {output.get('lm_eval_version', '?')} (simple_evaluate; lm-eval's own metrics and "
                   "standard errors)",
        "backend": config.backend, "weights": config.pretrained or "the model under test (results' model)",
        "model_args": config.model_args,
        "shots": output.get("n-shot", {}), "task versions": output.get("versions", {}),
        "chat template": "applied" if config.apply_chat_template else "none", "limit": config.limit or "all",
    }
    return BenchmarkResult(metrics=metrics, protocol=protocol, records=records, item_ids=item_ids,
                           item_scores=item_scores, stderr=stderr)


async def run(config: Config, context: EvalContext) -> BenchmarkResult:
    model_dir = _model_dir(config, context)
    output = await asyncio.to_thread(_evaluate, config, model_dir)  # blocking, CPU/GPU-bound
    return fold(output, config)


def decontamination_texts(config: Config) -> Iterator[tuple[str, str]]:
    """The prompt text of every evaluated document of every task (lm-eval's own doc_to_text); a group is
    read through its leaf tasks."""
    for name, task in _task_manager(config).load(config.tasks)["tasks"].items():
        for index, doc in enumerate(task.eval_docs):
            yield f"{name}/{index}", str(task.doc_to_text(doc))
