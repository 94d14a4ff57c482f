"""lm-evaluation-harness through `autoevol eval` (benchmark `lm_harness`): a custom task over a local jsonl file on
the tiny Llama (fixture), compared with a direct `lm_eval.simple_evaluate` call on the same model and task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoevol_train.config import InputError
from autoevol_train.eval import lm_harness
from autoevol_train.eval.run import EvalConfig, run_eval

ITEMS = [
    {"question": "What color is the sky on a clear day?", "choices": ["blue", "green", "red", "black"], "answer": 0},
    {"question": "How many legs does a spider have?", "choices": ["six", "eight", "four", "ten"], "answer": 1},
    {"question": "Which number is the largest?", "choices": ["3", "7", "12", "5"], "answer": 2},
    {"question": "What do bees make?", "choices": ["milk", "silk", "wool", "honey"], "answer": 3},
    {"question": "Which is a fruit?", "choices": ["apple", "carrot", "potato", "onion"], "answer": 0},
    {"question": "What is frozen water called?", "choices": ["steam", "ice", "fog", "rain"], "answer": 1},
    {"question": "Which animal barks?", "choices": ["cat", "dog", "cow", "fish"], "answer": 1},
    {"question": "What is two plus two?", "choices": ["three", "five", "four", "six"], "answer": 2},
]
TASK_YAML = """task: tiny_qa
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """A custom lm-eval task (multiple choice, scored by log-likelihood) over a local jsonl file."""
    directory = tmp_path_factory.mktemp("lm_eval_tasks")
    data = directory / "items.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in ITEMS))
    (directory / "tiny_qa.yaml").write_text(TASK_YAML.format(data=data))
    return directory


def test_project_numbers_equal_a_direct_simple_evaluate_call(tiny_llama, task_dir, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    config = EvalConfig.model_validate({
        "name": "tiny", "model": {"backend": "transformers", "model": str(tiny_llama)},
        "lm_harness": {"tasks": ["tiny_qa"], "include_path": str(task_dir), "model_args": {"dtype": "float32"},
                       "device": "cpu"}})
    results = json.loads(run_eval(config, tmp_path / "eval").read_text())["benchmarks"]["lm_harness"]

    direct = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tiny_llama},dtype=float32",
                                     tasks=["tiny_qa"], task_manager=TaskManager(include_path=str(task_dir)),
                                     device="cpu", batch_size=1)["results"]["tiny_qa"]
    assert results["metrics"] == {"tiny_qa/acc": direct["acc,none"], "tiny_qa/acc_norm": direct["acc_norm,none"]}
    assert results["stderr"] == {"tiny_qa/acc": direct["acc_stderr,none"],
                                 "tiny_qa/acc_norm": direct["acc_norm_stderr,none"]}
    assert results["stderr"]["tiny_qa/acc"] > 0
    # Per-item scores: one per document, their mean is the metric (compare pairs arms on them).
    scores = results["items"]["scores"]["tiny_qa/acc"]
    assert len(scores) == len(ITEMS) and sum(scores) / len(scores) == pytest.approx(direct["acc,none"])
    assert results["items"]["ids"] == [f"tiny_qa/{i}" for i in range(len(ITEMS))]
    assert results["protocol"]["shots"] == {"tiny_qa": 0} and results["protocol"]["backend"] == "hf"
    records = [json.loads(line) for line in (tmp_path / "eval" / "lm_harness.jsonl").read_text().splitlines()]
    assert [r["target"] for r in records] == [item["answer"] for item in ITEMS]
    assert all(len(r["filtered_resps"]) == 4 and r["acc"] in (0.0, 1.0) for r in records)


def test_decontamination_reads_the_task_documents_through_lm_eval(task_dir):
    config = lm_harness.Config(tasks=["tiny_qa"], include_path=str(task_dir))
    texts = dict(lm_harness.decontamination_texts(config))
    assert texts == {f"tiny_qa/{i}": f"Question: {item['question']}\nAnswer:" for i, item in enumerate(ITEMS)}


def test_unknown_task_is_an_input_error(tiny_llama, task_dir, tmp_path):
    config = EvalConfig.model_validate({
        "model": {"backend": "transformers", "model": str(tiny_llama)},
        "lm_harness": {"tasks": ["tiny_qa", "no_such_task"], "include_path": str(task_dir)}})
    with pytest.raises(InputError, match=r"lm_harness.tasks: unknown lm-eval task\(s\) \['no_such_task'\]"):
        run_eval(config, tmp_path / "eval")


def test_fold_names_filtered_metrics_and_keeps_missing_stderr_as_none():
    output = {"lm_eval_version": "0.4.13", "n-shot": {"t": 5}, "versions": {"t": 1.0},
              "results": {"t": {"alias": "t", "exact_match,strict-match": 0.5, "exact_match_stderr,strict-match": 0.25,
                                "exact_match,flexible": 1.0, "exact_match_stderr,flexible": "N/A"}},
              "samples": {"t": [{"doc_id": 0, "filter": "strict-match", "target": "3", "filtered_resps": ["3"],
                                 "metrics": ["exact_match"], "exact_match": 1.0},
                                {"doc_id": 1, "filter": "strict-match", "target": "4", "filtered_resps": ["5"],
                                 "metrics": ["exact_match"], "exact_match": 0.0}]}}
    result = lm_harness.fold(output, lm_harness.Config(tasks=["t"]))
    assert result.metrics == {"t/exact_match/strict-match": 0.5, "t/exact_match/flexible": 1.0}
    assert result.stderr == {"t/exact_match/strict-match": 0.25, "t/exact_match/flexible": None}
    assert result.item_ids == ["t/0/strict-match", "t/1/strict-match"]
    assert result.item_scores == {"t/exact_match/strict-match": [1.0, 0.0]}
    assert result.protocol["shots"] == {"t": 5} and "lm-eval 0.4.13" in result.protocol["harness"]


def test_shots_per_task_must_name_configured_tasks():
    config = lm_harness.Config(tasks=["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc2"],
                               num_fewshot={"arc_challenge": 25, "hellaswag": 10, "mmlu": 5})
    assert [config.shots(t) for t in config.tasks] == [25, 10, 5, None]
    with pytest.raises(ValueError, match=r"num_fewshot names tasks not in tasks: \['gsm8k'\]"):
        lm_harness.Config(tasks=["mmlu"], num_fewshot={"gsm8k": 5})
