"""Dedup, decontamination (real benchmark files), statistics, the parts store and the dataset writers."""

from __future__ import annotations

import gzip
import json

import datasets
import pytest

from autoevol_train.data.assemble import AssemblySpec, assemble_dataset
from autoevol_train.data.decontam import DecontamConfig, Decontaminator
from autoevol_train.data.dedup import DedupConfig, Deduplicator
from autoevol_train.data.parts import PartWriter, completed_keys, iter_in_order
from autoevol_train.data.stats import TextStats
from autoevol_train.data.writers import load_written_dataset
from autoevol_train.eval import gsm8k, humaneval, mt_bench


def local_benchmarks(shared_data) -> list:
    return [gsm8k.Config(path=str(shared_data / "gsm8k" / "test.jsonl")),
            humaneval.Config(path=str(shared_data / "humaneval" / "HumanEval.jsonl.gz")),
            mt_bench.Config(path=str(shared_data / "mt_bench" / "question.jsonl"))]


def test_exact_and_near_duplicates_keep_the_first():
    dedup = Deduplicator(DedupConfig())
    base = ("Write a short story about a lighthouse keeper who finds a message in a bottle and decides to "
            "sail across the northern sea to find the person who wrote it, in under three hundred words.")
    assert dedup.check("a", base) is None
    assert dedup.check("b", base.upper() + "!!") == "duplicate_of:a"  # case and punctuation do not count
    assert dedup.check("c", base.replace("three hundred", "four hundred")) == "near_duplicate_of:a"
    assert dedup.check("d", "Explain how a binary heap supports insert and extract-min in logarithmic time.") is None
    # rounds of one seed are not near duplicates of each other, exact copies still are
    other = Deduplicator(DedupConfig())
    other.check("x/r1", base, group="x")
    assert other.check("x/r2", base.replace("three", "four"), group="x") is None
    assert other.check("x/r3", base, group="x") == "duplicate_of:x/r1"


def test_near_duplicate_threshold_separates_similar_from_related():
    dedup = Deduplicator(DedupConfig(near_threshold=0.8))
    words = [f"w{i}" for i in range(200)]
    dedup.check("orig", " ".join(words))
    assert dedup.check("one-word-changed", " ".join(words[:100] + ["zz"] + words[101:])) is not None
    assert dedup.check("half-new", " ".join(words[:100] + [f"n{i}" for i in range(100)])) is None


def test_decontamination_on_real_benchmarks(shared_data):
    decon = Decontaminator(DecontamConfig(benchmarks=local_benchmarks(shared_data)))
    assert decon.items == {"gsm8k": 1319, "humaneval": 164, "mt_bench": 80}
    test_question = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[0])["question"]
    matches = decon.matches("r1", "Please solve this. " + test_question.upper())
    assert {(m.benchmark, m.item_id, m.n) for m in matches} >= {("gsm8k", "test-0", 13), ("gsm8k", "test-0", 8)}
    assert decon.removes(matches)
    with gzip.open(shared_data / "humaneval" / "HumanEval.jsonl.gz", "rt") as handle:
        problem = json.loads(handle.readline())
    solution_words = " ".join(problem["canonical_solution"].split()[:12])
    assert any(m.benchmark == "humaneval" and m.item_id == "HumanEval/0"
               for m in decon.matches("r2", f"Complete: {solution_words}"))
    mt = json.loads((shared_data / "mt_bench" / "question.jsonl").read_text().splitlines()[0])["turns"][0]
    eight = " ".join(mt.split()[2:10])  # an 8-word quote: counted, but under the 13-word removal bar
    quoted = decon.matches("r3", f"As they say, {eight}, right")
    assert [(m.benchmark, m.n) for m in quoted] == [("mt_bench", 8)] and not decon.removes(quoted)
    assert decon.matches("r4", "Tell me a joke about penguins.") == []


def test_text_stats_counts_constraints_and_diversity():
    stats = TextStats()
    stats.add([{"role": "user", "content": "Write a poem. You must use at least three rhymes and avoid clichés?"},
               {"role": "assistant", "content": "Roses are red"}])
    stats.add([{"role": "user", "content": "Write a poem."}, {"role": "assistant", "content": "ok"}])
    summary = stats.summary()
    assert summary["rows"] == 2 and summary["constraints_mean"] == 1.5  # must, at least, avoid
    assert summary["questions_mean"] == 0.5 and summary["instr_words_median"] == 8.0
    assert summary["vocab"] == 13 and 0 < summary["distinct_2"] <= 1


def test_parts_store_survives_a_cut_line_and_reads_in_order(tmp_path):
    parts = tmp_path / "parts"
    with PartWriter(parts, attempt=1, records_per_part=2) as writer:
        for index in (3, 0, 4):
            writer.write({"seed_index": index, "v": index})
    with open(parts / "part-0001-00001.jsonl", "a") as handle:
        handle.write('{"seed_index": 9, "v"')  # killed mid-write
    assert completed_keys(parts) == {0, 3, 4}
    with PartWriter(parts, attempt=2, records_per_part=2) as writer:
        for index in (1, 2, 4):  # 4 written again by a later attempt, in its last part (merged from memory)
            writer.write({"seed_index": index, "v": f"again {index}"})
    records = list(iter_in_order([parts], tmp_path / "scratch"))
    assert [r["seed_index"] for r in records] == [0, 1, 2, 3, 4]
    assert records[4]["v"] == 4  # counted once: the first attempt's record
    assert not list((tmp_path / "scratch").iterdir())  # the sorted runs are gone


def _record(index: int, text: str, response: str = "answer") -> dict:
    row = {"id": f"s{index}/r1", "messages": [{"role": "user", "content": text},
                                              {"role": "assistant", "content": response}],
           "seed_id": f"s{index}", "seed_index": index, "source": "t", "round": 1, "method_id": "m",
           "method_name": "m", "evolved_from": [f"seed {index}"], "evol_model": "e", "responder_model": "r",
           "evol_finish_reasons": ["stop"], "response_finish_reasons": ["stop"], "evol_prompt_tokens": 1,
           "evol_completion_tokens": 2, "response_prompt_tokens": 3, "response_completion_tokens": 4}
    return {"seed_index": index, "seed_id": f"s{index}", "seed": [{"role": "user", "content": f"seed {index}"}],
            "rows": [row], "rejects": []}


def test_assemble_filters_writes_loadable_dataset_and_card(tmp_path, shared_data):
    test_question = json.loads((shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[5])["question"]
    with PartWriter(tmp_path / "parts", attempt=1, records_per_part=3) as writer:
        for index, text in enumerate(["Describe the water cycle in four steps.", "Name three prime numbers.",
                                      "Describe the water cycle in four steps!", test_question,
                                      "Summarise the causes of the French Revolution."]):
            writer.write(_record(index, text))
        rejected = _record(5, "x")
        rejected["rows"] = []
        rejected["rejects"] = [{"seed_id": "s5", "seed_index": 5, "round": 1, "reason": "parse_failure"}]
        writer.write(rejected)
    spec = AssemblySpec(rounds=1, round_output="mixed", dedup=DedupConfig(),
                        decontam=DecontamConfig(benchmarks=local_benchmarks(shared_data)), rows_per_shard=2,
                        facts={"domain": "chat"}, config_yaml="a: 1\n")
    out = tmp_path / "dataset"
    summary = assemble_dataset([tmp_path / "parts"], out, spec)
    assert summary["rows"] == {"train": 3} and summary["rejected"] == 3
    assert summary["rejected_by_reason"] == {"contaminated": 1, "duplicate_of": 1, "parse_failure": 1}
    loaded = load_written_dataset(out, split="train")
    assert datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf"))["id"] == loaded["id"]
    assert loaded["id"] == ["s0/r1", "s1/r1", "s4/r1"] and loaded[0]["messages"][1]["content"] == "answer"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00002.parquet",
                                                               "train-00001-of-00002.parquet"]
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejects] == ["duplicate_of:s0/r1", "contaminated:gsm8k/test-5", "parse_failure"]
    card = (out / "README.md").read_text()
    assert "| rows in split `train` | 3 |" in card and "| — contaminated | 1 |" in card
    assert "| dataset | gsm8k | 13 | 1 |" in card and "| s3/r1 | gsm8k/test-5 | 13 | True |" in card
    assert "```yaml\na: 1\n```" in card and (out / "stats.png").stat().st_size > 1000
    assert not (tmp_path / "dataset.partial").exists()


@pytest.mark.parametrize("mode, splits", [("separate", {"round_1": 2, "round_2": 2}), ("last", {"train": 2}),
                                          ("mixed", {"train": 4})])
def test_round_output_modes(tmp_path, mode, splits):
    with PartWriter(tmp_path / "parts", attempt=1) as writer:
        for index in range(2):
            record = _record(index, f"Task number {index} about topic {index * 7}.")
            second = {**record["rows"][0], "id": f"s{index}/r2", "round": 2,
                      "messages": [{"role": "user", "content": f"Harder task {index}: explain topic {index * 7}."},
                                   {"role": "assistant", "content": "ok"}]}
            record["rows"].append(second)
            writer.write(record)
    spec = AssemblySpec(rounds=2, round_output=mode, dedup=DedupConfig(), decontam=DecontamConfig(enabled=False))
    summary = assemble_dataset([tmp_path / "parts"], tmp_path / "ds", spec)
    assert summary["rows"] == splits
    loaded = datasets.load_dataset(str(tmp_path / "ds"), cache_dir=str(tmp_path / "hf"))
    assert {name: len(split) for name, split in load_written_dataset(tmp_path / "ds").items()} == splits
    assert {name: len(split) for name, split in loaded.items()} == splits
