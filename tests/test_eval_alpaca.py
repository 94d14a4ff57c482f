"""AlpacaEval through the `alpaca-eval` package's official annotator, and our judge's "not comparable" label.

The official path runs the package's own CLI, prompt and parser; only its OpenAI endpoint is a local scripted
server (deterministic, no network) that answers the `alpaca_eval_gpt4` ranking prompt as GPT-4 would format it.
What is not exercised here: GPT-4's actual judgements, hence the AlpacaEval leaderboard's numbers themselves.
"""

from __future__ import annotations

import json
import re

import pytest

from autoevol_train.eval import alpaca_eval
from autoevol_train.eval.compare import main as compare_main
from autoevol_train.eval.run import EvalConfig, run_eval

INSTRUCTIONS = [f"Give me fact number {i} about rivers." for i in range(6)]


def baseline(tmp_path) -> str:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps([{"instruction": text, "output": f"A baseline fact {i}.", "generator": "davinci"}
                                for i, text in enumerate(INSTRUCTIONS)]))
    return str(path)


def model_rule(body, index):
    number = re.search(r"fact number (\d+)", body["messages"][-1]["content"]).group(1)
    return f"MODEL fact {number}: rivers flow downhill."


def ranking_rule(body, index):
    """alpaca_eval_gpt4's expected answer: a ranking of model_1 / model_2. The model wins on even-numbered facts;
    the package shuffles which output is model_1, so the rule finds the model's answer by its text."""
    prompt = body["messages"][-1]["content"]
    first_slot = prompt.split('"model": "model_1"')[1].split('"model": "model_2"')[0]
    number = int(re.search(r"fact number (\d+)", prompt).group(1))
    model_is_first = "MODEL fact" in first_slot
    model_wins = number % 2 == 0
    first_rank = 1 if model_is_first == model_wins else 2
    return f"[{{'model': 'model_1', 'rank': {first_rank}}}, {{'model': 'model_2', 'rank': {3 - first_rank}}}]"


def test_official_annotator_scores_through_the_judge_endpoint(scripted_server, tmp_path):
    model, judge = scripted_server(model_rule), scripted_server(ranking_rule)
    config = EvalConfig.model_validate({
        "name": "rivers", "model": {"model": "m", "base_urls": [model.base_url], "preflight": "off"},
        "judge": {"model": "gpt-4", "base_urls": [judge.base_url], "preflight": "off"},
        "alpaca_eval": {"baseline": baseline(tmp_path), "scorer": "alpaca-eval"}})
    results = json.loads(run_eval(config, tmp_path / "eval").read_text())
    block = results["benchmarks"]["alpaca_eval"]
    assert block["metrics"]["win_rate"] == pytest.approx(50.0) and block["metrics"]["n"] == 6
    assert block["metrics"]["no_verdict"] == 0 and block["caveat"] is None
    assert block["protocol"]["scorer"].startswith("alpaca-eval 0.") and "alpaca_eval_gpt4" in block["protocol"]["scorer"]
    assert block["items"]["scores"]["win_rate"] == [100.0, 0.0] * 3 and block["stderr"]["win_rate"] > 0
    # the package's own request: its GPT-4 config (model, greedy, 100 tokens) and its ranking prompt
    assert len(judge.counters.bodies) == 6
    for body in judge.counters.bodies:
        assert (body["model"], body["temperature"], body["max_tokens"]) == ("gpt-4", 0, 100)
        assert "rank the models by the quality of their answers" in body["messages"][-1]["content"]
    rows = [json.loads(line) for line in (tmp_path / "eval" / "alpaca_eval.jsonl").read_text().splitlines()]
    assert [r["preference"] for r in rows] == [2.0, 1.0] * 3 and all("'rank'" in r["annotation"] for r in rows)
    official = tmp_path / "eval" / "alpaca_eval_official" / "alpaca_eval_gpt4"
    assert (official / "leaderboard.csv").is_file() and (official / "annotations.json").is_file()
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| alpaca_eval | win_rate | 50.00 |" in table and "not comparable" not in table

    requests = judge.counters.requests
    run_eval(config, tmp_path / "eval")  # the package's annotation cache in the run directory answers again
    assert judge.counters.requests == requests


def test_own_judge_is_labelled_not_comparable_in_every_table(scripted_server, tmp_path, capsys):
    model = scripted_server(model_rule)
    judge = scripted_server(lambda body, index: "Output A is better. [[A]]")
    config = EvalConfig.model_validate({
        "name": "rivers", "model": {"model": "m", "base_urls": [model.base_url], "preflight": "off"},
        "judge": {"model": "local-judge", "base_urls": [judge.base_url], "preflight": "off"},
        "alpaca_eval": {"baseline": baseline(tmp_path)}})  # scorer: judge (the default)
    results = json.loads(run_eval(config, tmp_path / "eval").read_text())
    block = results["benchmarks"]["alpaca_eval"]
    assert block["caveat"] == alpaca_eval.NOT_COMPARABLE == "own pairwise judge: not comparable with the " \
                                                              "AlpacaEval leaderboard"
    assert block["metrics"]["win_rate"] == 50.0  # a judge that always says "A": position bias cancels
    label = f"| alpaca_eval ({alpaca_eval.NOT_COMPARABLE}) | win_rate | 50.00 |"
    assert label in (tmp_path / "eval" / "results.md").read_text()
    assert compare_main([str(tmp_path / "eval"), str(tmp_path / "eval"), "--labels", "a", "b"]) == 0
    assert f"| alpaca_eval ({alpaca_eval.NOT_COMPARABLE}) | win_rate | 50.00 | 50.00 |" in capsys.readouterr().out
    # the outputs file is in AlpacaEval's format: the package's own loader reads it for its annotators
    from alpaca_eval.utils import load_or_convert_to_dataframe

    frame = load_or_convert_to_dataframe(str(tmp_path / "eval" / "alpaca_eval_outputs.json"))
    assert list(frame["instruction"]) == INSTRUCTIONS and set(frame["generator"]) == {"rivers"}
    assert all(output.startswith("MODEL fact") for output in frame["output"])


def test_auto_scorer_takes_the_official_annotator_only_for_an_openai_compatible_judge():
    from autoevol_train.llm.types import OpenAIRole, TransformersRole

    auto = alpaca_eval.Config(scorer="auto")
    assert alpaca_eval.package_installed()  # the `alpaca` extra is part of the dev install
    assert alpaca_eval.uses_official_annotator(auto, OpenAIRole(model="gpt-4"))
    assert not alpaca_eval.uses_official_annotator(auto, TransformersRole(model="tiny"))
    assert not alpaca_eval.uses_official_annotator(alpaca_eval.Config(), OpenAIRole(model="gpt-4"))
    with pytest.raises(ValueError, match="the judge needs backend openai"):
        EvalConfig.model_validate({"model": {"model": "m"}, "judge": {"backend": "transformers", "model": "t"},
                                   "alpaca_eval": {"scorer": "alpaca-eval"}})
