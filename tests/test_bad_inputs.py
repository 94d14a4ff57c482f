"""Every malformed input is one line naming file, row and field, exit code 2, no traceback, no run directory.

Table-driven, through the real CLI in a subprocess (what a user sees): seed files of every supported kind and
format, configs, method files, benchmark files, pipelines and training recipes. The LLM endpoints named in
the configs are never reached: every case fails on its input before any call.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOWHERE = "http://127.0.0.1:9/v1"  # nothing listens: a case that got as far as a request would not exit 2


def _jsonl(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _gzip(rows: list) -> bytes:
    return gzip.compress(_jsonl(rows))


def _parquet(rows: list) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


OK = {"instruction": "Name three colours."}
SHAREGPT_OK = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}

# name → (seed file name, its bytes, extra seeds keys, what the one line must contain)
SEED_CASES = {
    "empty_jsonl": ("empty.jsonl", b"", {}, "empty.jsonl: no seeds (the source has no rows)"),
    "blank_lines_only": ("blank.jsonl", b"\n\n  \n", {}, "blank.jsonl: no seeds (the source has no rows)"),
    "empty_json_array": ("empty.json", b"[]", {}, "empty.json: no seeds (the source has no rows)"),
    "not_utf8_jsonl": ("latin1.jsonl", _jsonl([OK]) + b'{"instruction": "caf\xe9"}\n', {},
                       f"latin1.jsonl:row 2: field '<row>': not UTF-8 text (byte offset {len(_jsonl([OK])) + 20} "
                       "in the file)"),
    "not_utf8_json_array": ("latin1.json", b'[{"instruction": "ok"},\n {"instruction": "caf\xe9"}]', {},
                            "latin1.json: line 2: not UTF-8 text (byte offset 45)"),
    "invalid_json_line": ("broken.jsonl", _jsonl([OK, OK]) + b'{"instruction": "x"\n', {},
                          "broken.jsonl:row 3: field '<row>': invalid JSON"),
    "invalid_json_array": ("broken.json", b'[{"instruction": "a"},\n{"instruction": }]', {},
                           "broken.json: invalid JSON at line 2"),
    "row_not_an_object": ("list.jsonl", _jsonl([OK, ["a", "b"]]), {},
                          "list.jsonl:row 2: field '<row>': expected a JSON object, got list"),
    "alpaca_gzip_wrong_type": ("seeds.jsonl.gz", _gzip([OK, {"instruction": 7}]), {},
                               "seeds.jsonl.gz:row 2: field 'instruction': expected a string, got int"),
    "messages_parquet_no_content": ("chats.parquet", _parquet([
        {"messages": [{"role": "user", "content": "Hi"}]}, {"messages": [{"role": "user", "content": None}]}]),
        {}, "chats.parquet:row 2: field 'messages[0].content': missing or not a string"),
    "sharegpt_unknown_role": ("share.json", json.dumps([SHAREGPT_OK, {"conversations": [
        {"from": "robot", "value": "Hi"}]}]).encode(), {},
        "share.json:row 2: field 'conversations[0].from': unknown role 'robot'"),
    "gsm8k_empty_question": ("gsm.jsonl", _jsonl([{"question": "1+1?", "answer": "#### 2"},
                                                 {"question": " ", "answer": "#### 3"}]), {},
                             "gsm.jsonl:row 2: field 'question': empty"),
    "self_instruct_bad_instances": ("si.jsonl", _jsonl([{"instruction": "x", "instances": "nope"}]),
                                    {"format": "self_instruct"}, "si.jsonl:row 1: field 'instances'"),
    "code_alpaca_missing_instruction": ("code.jsonl", _jsonl([{"instruction": "Sort a list.", "output": "x"},
                                                             {"output": "y"}]), {"format": "code_alpaca"},
                                        "code.jsonl:row 2: field 'instruction': missing"),
    "unknown_shape": ("odd.jsonl", _jsonl([{"text": "hello"}]), {}, "odd.jsonl:row 1: cannot tell the seed format"),
    "all_rows_skipped": ("bad.jsonl", _jsonl([{"instruction": ""}]), {"skip_malformed": True},
                         "bad.jsonl: no seeds (all 1 rows were malformed and skipped)"),
}


def _evolve_config(seeds: dict, **extra) -> dict:
    return {"seeds": seeds, "domain": "chat", "method": "initial", "decontam": {"enabled": False},
            "llm": {"evol": {"model": "m", "base_urls": [NOWHERE]}}, **extra}


def _optimize_config(seeds: dict) -> dict:
    return {"seeds": seeds, "llm": {"evol": {"model": "m", "base_urls": [NOWHERE]},
                                    "optimizer": {"model": "m", "base_urls": [NOWHERE]}}}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "autoevol_train.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def _assert_one_line_exit_2(process: subprocess.CompletedProcess, command: str, expected: str, out: Path) -> None:
    assert process.returncode == 2, process.stderr[-3000:]
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert "Traceback" not in process.stderr
    assert lines[0].startswith(f"autoevol {command}: error: ") and expected in lines[0], lines[0]
    assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize("case", sorted(SEED_CASES))
@pytest.mark.parametrize("command", ["evolve", "optimize"])
def test_malformed_seed_file(tmp_path, case, command):
    name, content, extra, expected = SEED_CASES[case]
    (tmp_path / name).write_bytes(content)
    seeds = {"path": name, **extra}
    config = _evolve_config(seeds) if command == "evolve" else _optimize_config(seeds)
    (tmp_path / f"{command}.yaml").write_text(json.dumps(config))
    out = tmp_path / "out"
    process = _cli([command, f"{command}.yaml", "--output-dir", str(out)], tmp_path)
    _assert_one_line_exit_2(process, command, expected, out)


def _write(tmp_path: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


SEEDS_OK = _jsonl([OK, {"instruction": "Explain rain."}])
EVOLVE_WITH_METHOD = json.dumps(_evolve_config({"path": "s.jsonl"}, method="file", method_file="best.txt"))

# name → (command line after `autoevol`, files to write, what the one line must contain)
OTHER_CASES = {
    "config_missing": (["evolve", "nope.yaml"], {}, "nope.yaml: no such config file"),
    "config_yaml_syntax": (["evolve", "e.yaml"], {"e.yaml": "seeds: {path: s.jsonl}\ndomain: chat\nllm: [\n  a: 1\n"},
                           "e.yaml: invalid YAML at line 5, column 1: expected ',' or ']', but got '<stream end>' "
                           "(while parsing a flow sequence started at line 3)"),
    "config_unknown_key": (["evolve", "e.yaml"], {"e.yaml": json.dumps({**_evolve_config({"path": "s.jsonl"}),
                                                                        "round": 2})},
                           "e.yaml: round: unknown key (did you mean rounds?)"),
    "config_wrong_type_override": (["evolve", "e.yaml", "--output-dir", "out", "rounds=many"],
                                   {"e.yaml": json.dumps(_evolve_config({"path": "s.jsonl"}))},
                                   "e.yaml: rounds: expected int, got 'many'"),
    "api_key_env_unset": (["evolve", "e.yaml"], {"s.jsonl": SEEDS_OK, "e.yaml": json.dumps(_evolve_config(
        {"path": "s.jsonl"}, llm={"evol": {"model": "m", "base_urls": [NOWHERE],
                                           "api_key_env": "AUTOEVOL_TEST_KEY_NOBODY_SETS"}}))},
        "AUTOEVOL_TEST_KEY_NOBODY_SETS"),
    "config_top_level_list": (["optimize", "o.yaml"], {"o.yaml": "- a\n- b\n"},
                              "o.yaml: expected a mapping at the top level, got list"),
    "method_file_missing": (["evolve", "e.yaml"], {"e.yaml": EVOLVE_WITH_METHOD, "s.jsonl": SEEDS_OK},
                            "best.txt: no such method file"),
    "method_file_empty": (["evolve", "e.yaml"], {"e.yaml": EVOLVE_WITH_METHOD, "s.jsonl": SEEDS_OK,
                                                 "best.txt": "  \n"}, "best.txt: the method file is empty"),
    "method_file_not_utf8": (["evolve", "e.yaml"], {"e.yaml": EVOLVE_WITH_METHOD, "s.jsonl": SEEDS_OK,
                                                    "best.txt": b"Step 1\nre\xe9crire {instruction}\n"},
                             "best.txt: line 2: not UTF-8 text (byte offset 9)"),
    "optimize_initial_method_missing": (["optimize", "o.yaml"], {
        "o.yaml": json.dumps({**_optimize_config({"path": "s.jsonl"}), "initial_method": "mine.txt",
                              "dev_size": 1, "batch_size": 1}),
        "s.jsonl": SEEDS_OK}, "mine.txt: no such method file"),
    "eval_gsm8k_bad_row": (["eval", "v.yaml"], {
        "v.yaml": json.dumps({"model": {"model": "m", "base_urls": [NOWHERE]}, "gsm8k": {"path": "test.jsonl"}}),
        "test.jsonl": _jsonl([{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?"}])},
        "test.jsonl:row 2: field 'answer'"),
    "eval_gsm8k_file_missing": (["eval", "v.yaml"], {
        "v.yaml": json.dumps({"model": {"model": "m", "base_urls": [NOWHERE]}, "gsm8k": {"path": "test.jsonl"}})},
        "test.jsonl: no such GSM8K file"),
    "pipeline_no_evolve_section": (["run", "p.yaml"], {"p.yaml": "arms: [{name: seed, method: none}]\n"},
                                   "p.yaml: evolve: required key is missing"),
    "train_recipe_missing": (["train", "nope.yaml"], {}, "nope.yaml: no such recipe"),
    "train_recipe_yaml_syntax": (["train", "sft.yaml"], {"sft.yaml": "model_name_or_path: m\nlearning_rate: [1\n"},
                                 "sft.yaml: invalid YAML at line 3, column 1: expected ',' or ']'"),
    "pipeline_stage_file_yaml_syntax": (["run", "p.yaml"], {"p.yaml": "evolve: {file: evolve.yaml}\n",
                                                            "evolve.yaml": "seeds: {path: s.jsonl\n"},
                                        "p.yaml: evolve.file: evolve.yaml: invalid YAML at line 2, column 1"),
}


@pytest.mark.parametrize("case", sorted(OTHER_CASES))
def test_malformed_config_method_benchmark_recipe(tmp_path, case):
    args, files, expected = OTHER_CASES[case]
    _write(tmp_path, files)
    out = tmp_path / "out"
    if "--output-dir" not in args and args[0] != "train":
        args = [*args, "--output-dir", str(out)]
    process = _cli(args, tmp_path)
    _assert_one_line_exit_2(process, args[0], expected, out)


def test_misspelt_training_override_fails_at_once(tmp_path):
    """Issue 13 item 5 through the CLI: the pipeline checks the recipe + overrides before any stage runs."""
    out = tmp_path / "out"
    process = _cli(["run", "recipes/quickstart/pipeline.yaml", "--output-dir", str(out),
                    "train.overrides={learning_rat: 0.1}"], ROOT)
    _assert_one_line_exit_2(process, "run", "train.overrides: unknown key(s) 'learning_rat' (did you mean "
                                            "'learning_rate'?)", out)
