"""`run_evolve` against the REAL vLLM OpenAI server (tiny random Llama, model "tiny").

The tiny model writes random tokens; a stop string ("e") ends its answers after a few tokens so they finish
with finish_reason "stop" (unstopped, every answer would be cut by max_tokens and rejected as truncated).
Evol-Instruct's plain methods take the answer as the evolved instruction, so items get through; the
labelled initial method needs a "#Finally Rewritten Instruction#" label the tiny model never writes, so every
item is a parse failure, which is what the test checks. Exact semantics are in test_evolve.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoevol_train.config import InputError
from autoevol_train.data.writers import load_written_dataset
from autoevol_train.eval import gsm8k, humaneval, mt_bench
from autoevol_train.errors import ResultError
from autoevol_train.evol.evolve import EvolveConfig, run_evolve

pytestmark = pytest.mark.slow


def _config(url: str, seeds: str | dict, **extra) -> EvolveConfig:
    data = {"seeds": seeds if isinstance(seeds, dict) else {"path": seeds}, "domain": "chat",
            "method": "evol-instruct", "decontam": {"enabled": False},
            "llm": {"evol": {"model": "tiny", "base_urls": [url], "max_tokens": 16, "stop": ["e"], "seed": 0}}}
    data.update(extra)
    return EvolveConfig.model_validate(data)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _accounted(dataset: Path, seed_ids: set[str]) -> tuple[list[dict], list[dict]]:
    """Every seed is a row or a reject with a reason; rows are well-formed chats with provenance."""
    stats = json.loads((dataset / "stats.json").read_text())
    rejects = [json.loads(line) for line in (dataset / "rejects.jsonl").read_text().splitlines()]
    rows = load_written_dataset(dataset, split="train").to_list() if stats["rows"].get("train") else []
    assert {r["seed_id"] for r in rows} | {r["seed_id"] for r in rejects} == seed_ids
    assert all(r["reason"] for r in rejects)
    for row in rows:
        roles = [m["role"] for m in row["messages"] if m["role"] != "system"]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        assert row["evol_model"] == row["responder_model"] == "tiny" and row["evol_finish_reasons"][0] == "stop"
        assert row["method_name"].startswith("evol-instruct/") and row["evol_completion_tokens"] > 0
    return rows, rejects


def _seed_files(tmp_path: Path, shared_data: Path) -> dict[str, tuple[str, int]]:
    code = json.loads((shared_data / "seeds" / "code_alpaca_2k.json").read_text())[:6]
    chats = [[{"role": "user", "content": f"Suggest a name for pet number {i}."},
              {"role": "assistant", "content": "Rex"}] for i in range(6)]
    return {
        "alpaca": (_write(tmp_path / "alpaca.jsonl", [{"instruction": f"List {i} fruits.", "input": "",
                                                       "output": "apple"} for i in range(2, 8)]), 6),
        "code_alpaca": (_write(tmp_path / "code.jsonl", code), 6),
        "sharegpt": (_write(tmp_path / "sharegpt.jsonl", [{"conversations": [
            {"from": "human", "value": m[0]["content"]}, {"from": "gpt", "value": "Rex"}]} for m in chats]), 6),
        "messages": (_write(tmp_path / "messages.jsonl", [{"messages": m} for m in chats]), 6),
        "gsm8k": (str(shared_data / "gsm8k" / "train.jsonl"), 6),
        "self_instruct": (str(shared_data / "seeds" / "self_instruct_seed_tasks.jsonl"), 6),
    }


@pytest.mark.parametrize("fmt", ["alpaca", "code_alpaca", "sharegpt", "messages", "gsm8k", "self_instruct"])
def test_every_input_format(fmt, tmp_path, shared_data, vllm_server):
    path, count = _seed_files(tmp_path, shared_data)[fmt]
    domain = {"code_alpaca": "code", "gsm8k": "math"}.get(fmt, "chat")
    config = _config(vllm_server, {"path": path, "format": fmt, "limit": count}, domain=domain)
    dataset = run_evolve(config, tmp_path / "run")
    stem = Path(path).name.split(".")[0]
    ids = {f"{stem}-{i}" for i in range(1, count + 1)} if fmt != "self_instruct" else \
        {f"seed_task_{i}" for i in range(count)}
    rows, _ = _accounted(dataset, ids)
    assert rows, f"{fmt}: no seed got through evolution and answering"
    assert (dataset / "README.md").read_text().count(f"format: {fmt}") == 1


def test_multi_turn_two_rounds_separate_splits(tmp_path, vllm_server):
    conversations = [{"id": f"c{i}", "conversations": [
        {"from": "human", "value": f"Tell me about city {i}."}, {"from": "gpt", "value": "It is big."},
        {"from": "human", "value": f"And about its river number {i}?"}, {"from": "gpt", "value": "Long."}]}
        for i in range(8)]
    config = _config(vllm_server, _write(tmp_path / "conv.jsonl", conversations), rounds=2,
                     round_output="separate")
    dataset = run_evolve(config, tmp_path / "run")
    stats = json.loads((dataset / "stats.json").read_text())
    assert set(stats["rows"]) == {"round_1", "round_2"} and stats["rows"]["round_2"] > 0
    loaded = load_written_dataset(dataset)
    second = loaded["round_2"][0]
    first = next(r for r in loaded["round_1"] if r["seed_id"] == second["seed_id"])
    assert len(second["messages"]) == 4 and second["round"] == 2 and len(second["evol_finish_reasons"]) == 2
    assert second["evolved_from"] == [first["messages"][0]["content"], first["messages"][2]["content"]]
    rejects = [json.loads(line) for line in (dataset / "rejects.jsonl").read_text().splitlines()]
    chains = {r["seed_id"] for r in loaded["round_1"]} | {r["seed_id"] for r in rejects if r["round"] == 1}
    assert chains == {f"c{i}" for i in range(8)}  # round 1: every conversation kept or rejected


def test_filters_and_card_on_real_answers(tmp_path, shared_data, vllm_server):
    """The seed arm with answers regenerated by vLLM: a GSM8K test question is removed as contaminated, a
    repeated seed as a duplicate, and the card lists counts, reasons, matches, statistics and the config."""
    test_question = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[3])["question"]
    train = [json.loads(line) for line in (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:5]]
    seeds = train + [{"question": test_question, "answer": "#### 1"}, train[0]]
    benchmarks = [gsm8k.Config(path=str(shared_data / "gsm8k" / "test.jsonl")),
                  humaneval.Config(path=str(shared_data / "humaneval" / "HumanEval.jsonl.gz")),
                  mt_bench.Config(path=str(shared_data / "mt_bench" / "question.jsonl"))]
    config = _config(vllm_server, _write(tmp_path / "g.jsonl", seeds), domain="math", method="none",
                     respond_seeds=True, decontam={"benchmarks": [b.model_dump() for b in benchmarks]})
    dataset = run_evolve(config, tmp_path / "run")
    rejects = {r["seed_id"]: r["reason"] for r in
               (json.loads(line) for line in (dataset / "rejects.jsonl").read_text().splitlines())}
    assert rejects["g-6"] == "contaminated:gsm8k/test-3" and rejects["g-7"] == "duplicate_of:g-1/r0"
    rows = load_written_dataset(dataset, split="train")
    assert set(rows["seed_id"]) | set(rejects) == {f"g-{i}" for i in range(1, 8)}
    assert all(r["responder_model"] == "tiny" for r in rows)
    card = (dataset / "README.md").read_text()
    assert "| seeds read | 7 |" in card and "| — contaminated | 1 |" in card and "| — duplicate_of | 1 |" in card
    assert "| g-6/r0 | gsm8k/test-3 | 13 | True |" in card and "gsm8k (1319 items)" in card
    assert "| seed | 7 |" in card and "instr_words_mean" in card and "![statistics](stats.png)" in card
    assert "respond_seeds: true" in card
    matches = [json.loads(line) for line in (dataset / "contamination.jsonl").read_text().splitlines()]
    assert {(m["row_id"], m["n"]) for m in matches} >= {("g-6/r0", 13), ("g-6/r0", 8)}


def test_labelled_method_without_labels_is_all_parse_failures(tmp_path, shared_data, vllm_server):
    path = str(shared_data / "gsm8k" / "train.jsonl")
    config = _config(vllm_server, {"path": path, "limit": 6}, domain="math", method="initial")
    with pytest.raises(ResultError, match=r"the dataset is empty \(6 seeds; rejects by reason: parse_failure 6"):
        run_evolve(config, tmp_path / "run")
    dataset = run_evolve(config.model_copy(update={"allow_empty": True}), tmp_path / "run")  # resumes
    stats = json.loads((dataset / "stats.json").read_text())
    assert stats["rows"] == {"train": 0} and stats["rejected_by_reason"] == {"parse_failure": 6}
    assert "| — parse_failure | 6 |" in (dataset / "README.md").read_text()
    with pytest.raises(InputError, match="have no rows"):
        load_written_dataset(dataset)
