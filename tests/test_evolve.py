"""Dataset evolution, exact semantics on the scripted server (not an LLM: replies follow `rule` below).

Covered: R rounds chained item by item with provenance; multi-turn seeds evolved turn by turn with answers
regenerated against the evolved history; the domain's responder prompt; Evol-Instruct's seeded draws; failure
reasons routed to rejects; the seed arm; shards + merge equal to one run; 5% server errors and hangs.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from autoevol_train.config import ConfigError, InputError, load_config, parse_config
from autoevol_train.errors import ResultError
from autoevol_train.data.writers import load_written_dataset
from autoevol_train.evol.evolve import EvolveConfig, run_evolve
from tests.support.scripted_server import Faults, Reply

_INSTRUCTION = re.compile(r"(?:#Instruction#:\n|#Given (?:Prompt|Question)#:\n)(.*?)(?:\n#(?:Rewritten|Created) "
                          r"(?:Prompt|Question)#:.*)?\Z", re.DOTALL)


def rule(body: dict, index: int) -> Reply | str:
    """Evol prompts (no system message): append a constraint after the final label, or fail on cue words.
    Responder prompts (system message first): answer, naming the turn count it saw."""
    messages = body["messages"]
    last = messages[-1]["content"]
    if messages[0]["role"] == "system":
        if "ASKBACK" in last:
            return "Sure, which language do you mean?"
        users = sum(m["role"] == "user" for m in messages)
        return f"Answer {users} to: {last} The answer is: 42"
    instruction = _INSTRUCTION.search(last).group(1).strip()
    if "NOLABEL" in instruction:
        return "Step 1 #Methods List#: nothing to do"
    if "#Given" in last:  # Evol-Instruct's plain prompts: the answer is the rewritten text itself
        return f"{instruction} (more detail)"
    return f"Step 1 #Methods List#: a\nStep 4 #Finally Rewritten Instruction#: {instruction} Justify it."


def _seeds(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(url: str, seeds: str, **extra) -> EvolveConfig:
    data = {"seeds": {"path": seeds}, "domain": "chat", "method": "initial",
            "decontam": {"enabled": False},
            # The rules script every answer; the endpoint preflight is tested in test_stage_preflight.py.
            "llm": {"evol": {"model": "scripted", "base_urls": [url], "max_concurrency": 8, "preflight": "off"}}}
    data.update(extra)
    return EvolveConfig.model_validate(data)


def _rejects(dataset: Path) -> list[dict]:
    return [json.loads(line) for line in (dataset / "rejects.jsonl").read_text().splitlines()]


GSM = [{"question": f"Tom has {i} apples and buys {i + 3} more. How many apples does Tom have now?",
        "answer": f"#### {2 * i + 3}"} for i in range(1, 5)]


def test_two_rounds_chain_per_item_with_provenance(tmp_path, scripted_server):
    server = scripted_server(rule)
    config = _config(server.base_url, _seeds(tmp_path / "gsm.jsonl", GSM), domain="math", rounds=2)
    dataset = run_evolve(config, tmp_path / "run")
    rows = load_written_dataset(dataset, split="train")
    assert rows["id"][:2] == ["gsm-1/r1", "gsm-1/r2"] and len(rows) == 8 and rows["round"] == [1, 2] * 4
    first, second = rows[0], rows[1]
    assert first["messages"][0]["content"] == GSM[0]["question"] + " Justify it."
    assert second["evolved_from"] == [first["messages"][0]["content"]]  # round 2 evolves round 1
    assert second["messages"][0]["content"] == GSM[0]["question"] + " Justify it. Justify it."
    assert second["messages"][1]["content"].endswith("The answer is: 42")
    assert first["method_name"] == "initial" and len(first["method_id"]) == 12
    assert first["evol_model"] == first["responder_model"] == "scripted"
    assert first["evol_finish_reasons"] == ["stop"] and first["response_finish_reasons"] == ["stop"]
    assert first["evol_prompt_tokens"] > 100 and first["response_completion_tokens"] > 5
    responder_bodies = [b for b in server.counters.bodies if b["messages"][0]["role"] == "system"]
    assert all("The answer is: N" in b["messages"][0]["content"] for b in responder_bodies)  # math prompt
    card = (dataset / "README.md").read_text()
    assert "| rows in split `train` | 8 |" in card and "| round 2 | 4 |" in card
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["llm_usage"]["evol"]["samples"] == 8


def test_multi_turn_is_evolved_turn_by_turn(tmp_path, scripted_server):
    server = scripted_server(rule)
    conversation = {"id": "conv", "conversations": [
        {"from": "system", "value": "You are terse."}, {"from": "human", "value": "Name a planet."},
        {"from": "gpt", "value": "Mars."}, {"from": "human", "value": "How far is it from the Sun?"},
        {"from": "gpt", "value": "About 228 million km."}]}
    dataset = run_evolve(_config(server.base_url, _seeds(tmp_path / "sg.jsonl", [conversation])), tmp_path / "run")
    row = load_written_dataset(dataset, split="train")[0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert row["messages"][0]["content"] == "You are terse."  # the seed's own system message is kept
    assert row["messages"][3]["content"] == "How far is it from the Sun? Justify it."
    assert row["messages"][2]["content"] == "Answer 1 to: Name a planet. Justify it. The answer is: 42"
    assert row["messages"][4]["content"].startswith("Answer 2 to: How far")  # regenerated after evolved turn 1
    second_answer = [b for b in server.counters.bodies if b["messages"][0]["role"] == "system"][-1]["messages"]
    assert second_answer[0]["content"] == "You are terse." and second_answer[1]["content"].endswith("Justify it.")
    assert second_answer[2]["content"].startswith("Answer 1 to")
    assert row["evolved_from"] == ["Name a planet.", "How far is it from the Sun?"]


def test_failures_go_to_rejects_with_reasons(tmp_path, scripted_server):
    server = scripted_server(rule)
    seeds = [{"instruction": "Write a haiku about rain."}, {"instruction": "NOLABEL please"},
             {"instruction": "Translate ASKBACK into French."}, {"instruction": "Write a haiku about rain."}]
    dataset = run_evolve(_config(server.base_url, _seeds(tmp_path / "a.jsonl", seeds), rounds=2), tmp_path / "run")
    rows = load_written_dataset(dataset, split="train")
    assert rows["id"] == ["a-1/r1", "a-1/r2"]
    reasons = {(r["seed_id"], r["round"]): r["reason"] for r in _rejects(dataset)}
    assert reasons == {("a-2", 1): "parse_failure", ("a-3", 1): "response_asks_back",
                       ("a-4", 1): "duplicate_of:a-1/r1", ("a-4", 2): "duplicate_of:a-1/r2"}
    parse_reject = next(r for r in _rejects(dataset) if r["reason"] == "parse_failure")
    assert parse_reject["evol_output"] == "Step 1 #Methods List#: nothing to do" and parse_reject["evolved"] is None


def test_evol_instruct_draws_are_seeded_per_item_and_round(tmp_path, scripted_server):
    server = scripted_server(rule)
    seeds = _seeds(tmp_path / "s.jsonl", [{"instruction": f"Describe animal number {i} in detail."}
                                          for i in range(12)])
    names = []
    for run, in_flight in (("a", 1), ("b", 12)):
        config = _config(server.base_url, seeds, method="evol-instruct", rounds=2, max_in_flight=in_flight,
                         dedup={"near": False})
        names.append(load_written_dataset(run_evolve(config, tmp_path / run), split="train")["method_name"])
    assert names[0] == names[1] and len(set(names[0])) >= 4
    assert all(name.startswith("evol-instruct/") for name in names[0])


def test_math_baseline_is_wizardmath_drawn_per_item_and_round_from_the_seed(tmp_path, scripted_server):
    """domain math + method evol-instruct: WizardMath's upward and downward methods, one drawn per item and
    round; the same seed draws the same methods (whatever the concurrency), another seed other ones."""
    server = scripted_server(rule)
    seeds = _seeds(tmp_path / "m.jsonl", [{"question": f"Ann has {i} pens and buys {i + 2} more. How many pens?",
                                           "answer": f"#### {2 * i + 2}"} for i in range(16)])
    draws = {}
    for run, seed, in_flight in (("a", 42, 1), ("b", 42, 16), ("c", 7, 16)):
        config = _config(server.base_url, seeds, domain="math", method="evol-instruct", rounds=2, seed=seed,
                         max_in_flight=in_flight, dedup={"exact": False, "near": False})
        rows = load_written_dataset(run_evolve(config, tmp_path / run), split="train")
        draws[run] = list(zip(rows["id"], rows["method_name"]))
    assert len(draws["a"]) == 32 and draws["a"] == draws["b"] and draws["a"] != draws["c"]
    assert {name for _, name in draws["a"]} == {"evol-instruct/math-up-constraints", "evol-instruct/math-up-numbers",
                                                "evol-instruct/math-up-steps", "evol-instruct/math-down-easier"}
    evol_prompts = [b["messages"][0]["content"] for b in server.counters.bodies if b["messages"][0]["role"] == "user"]
    assert all("#Given Question#:\n" in p and "#Rewritten Question#:" in p for p in evol_prompts)


def test_repooled_items_evolve_again_in_the_next_round(tmp_path, scripted_server):
    """Evol-Instruct's in-breadth draws fail here (the answer copies "created prompt"): with repool_failed the
    next round evolves the same instruction again, as WizardLM puts failed items back in the pool; without
    it the item's chain ends at its first failure."""
    def breadth_fails(body: dict, index: int) -> Reply | str:
        last = body["messages"][-1]["content"]
        if "#Created Prompt#" in last:
            return "A created prompt: " + _INSTRUCTION.search(last).group(1)
        return rule(body, index)

    server = scripted_server(breadth_fails)
    seeds = _seeds(tmp_path / "s.jsonl", [{"instruction": f"Describe the habitat of animal {i}."} for i in range(16)])
    outcome = {}
    for repool in (True, False):
        config = _config(server.base_url, seeds, method="evol-instruct", rounds=3, repool_failed=repool,
                         dedup={"exact": False, "near": False})
        dataset = run_evolve(config, tmp_path / f"repool-{repool}")
        rows = load_written_dataset(dataset, split="train").to_list()
        outcome[repool] = rows, _rejects(dataset)
    rows, rejects = outcome[True]
    assert rejects and {r["reason"] for r in rejects} == {"copied_prompt_words"}
    assert sorted((r["seed_id"], r["round"]) for r in rows + rejects) == sorted(
        (f"s-{i}", n) for i in range(1, 17) for n in (1, 2, 3))  # every round of every seed was tried
    retried = [(reject, row) for reject in rejects for row in rows
               if row["seed_id"] == reject["seed_id"] and row["round"] == reject["round"] + 1]
    assert retried and all(row["evolved_from"] == [reject["instruction"]] for reject, row in retried)
    rows, rejects = outcome[False]
    assert all(row["round"] < reject["round"] for reject in rejects for row in rows
               if row["seed_id"] == reject["seed_id"]) or not rejects
    assert len(rows) + len(rejects) < 48


def test_seed_arm_keeps_answers_and_fills_missing_ones(tmp_path, scripted_server):
    server = scripted_server(rule)
    seeds = [{"instruction": "Say hi.", "output": "hi"}, {"instruction": "Say bye.", "output": ""}]
    dataset = run_evolve(_config(server.base_url, _seeds(tmp_path / "a.jsonl", seeds), method="none"),
                         tmp_path / "run")
    rows = load_written_dataset(dataset, split="train")
    assert rows["round"] == [0, 0] and rows["method_id"] == ["none", "none"]
    assert rows[0]["messages"][1]["content"] == "hi" and rows[0]["responder_model"] == ""
    assert rows[1]["messages"][1]["content"].startswith("Answer 1 to: Say bye.")
    assert server.counters.requests == 1


def test_shards_then_merge_equal_one_run(tmp_path, scripted_server):
    server = scripted_server(rule)
    seeds = _seeds(tmp_path / "gsm.jsonl", GSM + [{"question": "What is 7 times 6?", "answer": "42"}])
    whole = load_written_dataset(run_evolve(_config(server.base_url, seeds, rounds=2), tmp_path / "whole"), "train")
    shard_dirs = []
    for index in range(2):
        out = run_evolve(_config(server.base_url, seeds, rounds=2, shard_index=index, num_shards=2),
                         tmp_path / f"shard{index}")
        assert json.loads((out / "shard.json").read_text())["items"] == (3 if index == 0 else 2)
        shard_dirs.append(str(out))
    with pytest.raises(InputError, match=r"every shard 0..1 is needed once"):
        run_evolve(_config(server.base_url, seeds, merge_from=shard_dirs[:1]), tmp_path / "bad")
    requests = server.counters.requests
    merged = run_evolve(_config(server.base_url, seeds, rounds=2, merge_from=shard_dirs), tmp_path / "merged")
    assert server.counters.requests == requests  # merging makes no LLM call
    assert load_written_dataset(merged, "train").to_dict() == whole.to_dict()


def test_config_errors_name_the_key(tmp_path):
    base = {"seeds": {"path": "x.jsonl"}, "domain": "chat", "llm": {"evol": {"model": "m"}}}
    with pytest.raises(ConfigError, match="method 'file' needs method_file"):
        parse_config(EvolveConfig, base, "evolve.yaml")
    with pytest.raises(ConfigError, match=r"evolve.yaml: rounds: .*greater than or equal to 1"):
        parse_config(EvolveConfig, {**base, "method": "initial", "rounds": 0}, "evolve.yaml")
    with pytest.raises(ConfigError, match=r"evolve.yaml: seeds.formatt: unknown key"):
        parse_config(EvolveConfig, {**base, "seeds": {"path": "x", "formatt": "alpaca"}}, "evolve.yaml")
    with pytest.raises(InputError, match="no such method file"):
        run_evolve(parse_config(EvolveConfig, {**base, "method_file": str(tmp_path / "none.txt")}, "e.yaml"),
                   tmp_path / "run")


def test_server_errors_and_hangs_every_seed_accounted_for(tmp_path, scripted_server):
    """5% HTTP 500s and 5% hangs (1 s timeout, one retry): each seed is a row or a reject with a reason."""
    server = scripted_server(rule, faults=Faults(error_rate=0.05, hang_rate=0.05, seed=3))
    seeds = [{"instruction": f"Plan a trip to city number {i} with a budget of {100 + i} dollars."}
             for i in range(120)]
    config = _config(server.base_url, _seeds(tmp_path / "trips.jsonl", seeds), dedup={"near": False},
                     llm={"evol": {"model": "scripted", "base_urls": [server.base_url], "timeout_s": 1.0,
                                   "max_retries": 1, "retry_initial_s": 0.01, "max_concurrency": 64,
                                   "preflight": "off"}})
    dataset = run_evolve(config, tmp_path / "run")
    kept = set(load_written_dataset(dataset, split="train")["seed_id"])
    rejects = _rejects(dataset)
    assert all(r["reason"] and r["error"] for r in rejects)
    rejected = {r["seed_id"] for r in rejects}
    assert kept.isdisjoint(rejected) and kept | rejected == {f"trips-{i}" for i in range(1, 121)}
    assert {r["reason"] for r in rejects} <= {"evol_request_failed", "response_request_failed"}
    assert rejects and server.counters.errors > 0 and server.counters.hangs > 0
    assert len(kept) > 90


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/*/evolve.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_recipes_load_with_paper_settings_and_their_offline_overrides(recipe, shared_data):
    config = load_config(EvolveConfig, recipe)
    assert config.method == "file" and config.rounds == 1 and config.llm.evol.temperature == 0.0
    assert config.domain == recipe.parent.name and config.decontam.remove_at is None  # counted, not removed (Table 10)
    text = recipe.read_text()
    offline = text.split("# Offline (tests, no hub): ", 1)[1].split("\n#   ", 1)
    overrides = shlex.split(offline[0].rstrip(" \\") + " " + offline[1].split("\n", 1)[0])
    local = load_config(EvolveConfig, recipe, overrides)
    assert Path(local.seeds.path).is_file() or (Path(__file__).resolve().parents[1] / local.seeds.path).is_file()
    assert [b.path for b in local.decontam.benchmarks] == ["../shared/data/gsm8k/test.jsonl",
                                                           "../shared/data/humaneval/HumanEval.jsonl.gz",
                                                           "../shared/data/mt_bench/question.jsonl"]
    assert len(RECIPES) == 3  # one per domain


def test_rerun_with_changed_filters_reassembles_changed_evolution_is_refused(tmp_path, scripted_server):
    server = scripted_server(rule)
    seeds = _seeds(tmp_path / "s.jsonl", [{"instruction": "Name a fruit."}, {"instruction": "Name a fruit!"}])
    run_evolve(_config(server.base_url, seeds), tmp_path / "run")
    assert (tmp_path / "run" / "dataset" / "rejects.jsonl").read_text().count("duplicate_of") == 1
    requests = server.counters.requests
    again = run_evolve(_config(server.base_url, seeds, dedup={"exact": False, "near": False}), tmp_path / "run")
    assert len(load_written_dataset(again, split="train")) == 2 and server.counters.requests == requests
    with pytest.raises(InputError, match=r"different evolution \(changed: method, rounds\)"):
        run_evolve(_config(server.base_url, seeds, method="weak", rounds=2), tmp_path / "run")


def test_unreadable_benchmark_fails_before_any_llm_call(tmp_path, scripted_server):
    server = scripted_server(rule)
    config = _config(server.base_url, _seeds(tmp_path / "a.jsonl", [{"instruction": "Hi."}]),
                     decontam={})  # the default: benchmarks from the hub, which this machine cannot reach
    with pytest.raises(InputError, match=r"decontamination: gsm8k: cannot load 'openai/gsm8k'"):
        run_evolve(config, tmp_path / "run")
    assert server.counters.requests == 0


AGREE_CASES = {  # cue → (what the evol LLM writes, what the answer is)
    "ok": ("good", "A careful answer that walks through every part of the task."),
    "nolabel": ("Step 1 #Methods List#: none", None), "same": ("same", None), "copy": ("copy", None),
    "evoltrunc": (Reply("Step 1 #Methods", finish_reason="length"), None), "evol400": (Reply(status=400), None),
    "ask": ("good", "Sure, which item do you mean?"), "provide": ("good", "I can; please provide the item."),
    "sorry": ("good", "Sorry, I cannot."), "punct": ("good", "... ?!"),
    "anstrunc": ("good", Reply("Part", finish_reason="length")), "ans400": ("good", Reply(status=400)),
}


def agree_rule(body: dict, index: int) -> Reply | str:
    """Evol prompts: per cue, a good rewrite, no label, an unchanged or prompt-copying one, a cut or failed
    call. Answers (with or without a system prompt): per cue, fine, asking back, ..., a cut or failed call."""
    if body["model"] == "optimizer-model":
        return "No method block today."
    last = body["messages"][-1]["content"]
    case = re.search(r"CASE-(\w+)", last).group(1)
    evol, answer = AGREE_CASES[case]
    if "#Instruction#:\n" not in last:
        return answer
    instruction = last.rpartition("#Instruction#:\n")[2]
    if evol == "good" or evol == "copy":
        return f"Step 4 #Finally Rewritten Instruction#: {instruction} " + (
            "Explain every step." if evol == "good" else "Follow the given prompt.")
    return f"Step 4 #Finally Rewritten Instruction#: {instruction}" if evol == "same" else evol


def test_optimize_lambda_and_evolve_filter_decide_alike(tmp_path, scripted_server):
    """λ's failure decisions and the evolve stage's filter are the same code (`evolve_once`): on the same
    evolutions and answers they give the same reason for every dev item, success or failure of each kind."""
    from autoevol_train.evol.optimize import OptimizeConfig, run_optimize

    server = scripted_server(agree_rule)
    seeds = _seeds(tmp_path / "s.jsonl", [{"instruction": f"Task {i} CASE-{case}: describe item {i}."}
                                          for i in range(5) for case in AGREE_CASES])
    rules = {"elimination": True}
    optimize = OptimizeConfig.model_validate({
        "seeds": {"path": seeds}, "pool_size": 60, "dev_size": 50, "batch_size": 10, "trajectory_rounds": 1,
        "candidates": 1, "steps": 1, "failures": rules,
        "llm": {"evol": {"model": "evol-model", "base_urls": [server.base_url], "preflight": "off"},
                "optimizer": {"model": "optimizer-model", "base_urls": [server.base_url], "preflight": "off"}}})
    run_optimize(optimize, tmp_path / "optimize")
    lam = {r["original"]: r["reason"] for r in
           map(json.loads, (tmp_path / "optimize" / "dev" / "step01.jsonl").read_text().splitlines())}
    dataset = run_evolve(_config(server.base_url, seeds, failures=rules, dedup={"exact": False, "near": False},
                                 llm={"evol": {"model": "evol-model", "base_urls": [server.base_url],
                                               "preflight": "off"}}),
                         tmp_path / "evolve")
    filtered = {r["instruction"]: r["reason"] for r in _rejects(dataset)}
    filtered |= {row["evolved_from"][0]: None for row in load_written_dataset(dataset, split="train")}
    assert len(lam) == 50 and {k: filtered[k] for k in lam} == lam
    assert set(lam.values()) == {None, "parse_failure", "unchanged", "copied_prompt_words", "evol_truncated",
                                 "evol_request_failed", "response_asks_back", "response_please_provide",
                                 "short_sorry", "punctuation_only", "response_truncated", "response_request_failed"}


def test_mostly_request_errors_or_an_empty_dataset_is_a_result_error(tmp_path, scripted_server):
    """3 of 5 seeds lose their answer to HTTP 400: exit 4 naming the counts per reason, after the dataset and
    its rejects are written. A dataset emptied by content failures is exit 4 too, unless allow_empty."""
    def failing(body: dict, index: int) -> Reply | str:
        if body["messages"][0]["role"] == "system" and "FAIL" in body["messages"][-1]["content"]:
            return Reply(status=400)
        return rule(body, index)

    server = scripted_server(failing)
    seeds = _seeds(tmp_path / "s.jsonl", [{"instruction": f"Name fruit number {i}{' FAIL' * (i < 3)}."}
                                          for i in range(5)])
    with pytest.raises(ResultError, match=r"evolve: 3 of 5 seeds failed for request errors \(rejects by reason: "
                                          r"response_request_failed 3; .*rejects.jsonl\)"):
        run_evolve(_config(server.base_url, seeds), tmp_path / "run")
    assert len(_rejects(tmp_path / "run" / "dataset")) == 3
    assert len(load_written_dataset(tmp_path / "run" / "dataset", split="train")) == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "3 of 5 seeds failed for request errors" in manifest["error"]
    run_evolve(_config(server.base_url, seeds, max_request_error_share=0.8), tmp_path / "run")  # resumes, passes

    nolabel = _seeds(tmp_path / "n.jsonl", [{"instruction": f"NOLABEL task {i}"} for i in range(4)])
    with pytest.raises(ResultError, match=r"evolve: the dataset is empty \(4 seeds; rejects by reason: "
                                          r"parse_failure 4"):
        run_evolve(_config(server.base_url, nolabel), tmp_path / "empty")
    dataset = run_evolve(_config(server.base_url, nolabel, allow_empty=True), tmp_path / "empty")
    assert len(_rejects(dataset)) == 4
