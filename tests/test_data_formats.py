"""Seed formats → the one row schema; file kinds; malformed rows (error naming file/row/field, or skip+count)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autoevol_train.config import InputError
from autoevol_train.data.formats import LoadReport, SeedSource, iter_seed_rows


def _rows(path: Path | str, **kwargs) -> list[dict]:
    return list(iter_seed_rows(SeedSource(path=str(path), **kwargs)))


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_gsm8k_real_file(shared_data):
    rows = _rows(shared_data / "gsm8k" / "train.jsonl", limit=3)
    assert [r["id"] for r in rows] == ["train-1", "train-2", "train-3"]
    assert rows[0]["format"] == "gsm8k" and rows[0]["source"] == "train.jsonl"
    assert rows[0]["messages"][0]["role"] == "user" and rows[0]["messages"][0]["content"].startswith("Natalia")
    assert rows[0]["messages"][1]["content"].endswith("#### 72")


def test_code_alpaca_real_file_joins_input(shared_data):
    rows = _rows(shared_data / "seeds" / "code_alpaca_2k.json", format="code_alpaca")
    assert len(rows) == 2017
    assert rows[0]["messages"][0]["content"] == ("What are the distinct values from the given list?\n\n"
                                                 "dataList = [3, 9, 3, 5, 7, 9, 5]")
    assert rows[0]["messages"][1]["role"] == "assistant"


def test_self_instruct_real_file(shared_data):
    rows = _rows(shared_data / "seeds" / "self_instruct_seed_tasks.jsonl")
    assert len(rows) == 175 and rows[0]["format"] == "self_instruct" and rows[0]["id"] == "seed_task_0"
    relation = rows[1]["messages"]
    assert relation[0]["content"].endswith("Night : Day :: Right : Left")
    assert relation[1]["content"].startswith("The relation between")


def test_alpaca_without_output_has_no_assistant_turn(tmp_path):
    rows = _rows(_jsonl(tmp_path / "a.jsonl", [{"instruction": "Name a colour.", "input": "", "output": ""}]))
    assert rows[0]["messages"] == [{"role": "user", "content": "Name a colour."}]


def test_sharegpt_multi_turn_and_system(tmp_path):
    conv = {"id": "c1", "conversations": [{"from": "system", "value": "Be brief."},
                                          {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"},
                                          {"from": "human", "value": "And?"}, {"from": "gpt", "value": "Bye"}]}
    rows = _rows(_jsonl(tmp_path / "s.jsonl", [conv]))
    assert rows[0]["format"] == "sharegpt" and rows[0]["id"] == "c1"
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]


def test_messages_format_from_parquet(tmp_path):
    path = tmp_path / "m.parquet"
    chats = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(3)]
    pq.write_table(pa.Table.from_pylist([{"messages": c} for c in chats]), path)
    rows = _rows(path)
    assert [r["messages"] for r in rows] == chats and rows[2]["id"] == "m-3"


def test_json_array_and_gzip_jsonl(tmp_path):
    data = [{"question": f"What is {i}+{i}?", "answer": f"#### {2 * i}"} for i in range(4)]
    (tmp_path / "g.json").write_text(json.dumps(data, indent=2))
    with gzip.open(tmp_path / "g.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in data)
    from_array, from_gzip = _rows(tmp_path / "g.json"), _rows(tmp_path / "g.jsonl.gz")
    assert [r["messages"] for r in from_array] == [r["messages"] for r in from_gzip]
    assert [r["id"] for r in from_gzip] == ["g-1", "g-2", "g-3", "g-4"]
    assert len(_rows(tmp_path / "g.json", limit=2)) == 2


def test_local_dataset_directory_goes_through_load_dataset(tmp_path):
    (tmp_path / "ds").mkdir()
    _jsonl(tmp_path / "ds" / "train.jsonl", [{"instruction": "Say hi.", "output": "hi"}])
    rows = _rows(tmp_path / "ds")
    assert rows[0]["messages"] == [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]


@pytest.mark.parametrize("row, fmt, field", [
    ({"instruction": 3, "output": "x"}, "alpaca", "field 'instruction': expected a string, got int"),
    ({"question": "", "answer": "x"}, "gsm8k", "field 'question': empty"),
    ({"conversations": [{"from": "gpt", "value": "hi"}]}, "sharegpt", "turn 1 is 'assistant', expected 'user'"),
    ({"conversations": [{"from": "robot", "value": "hi"}]}, "sharegpt", "field 'conversations[0].from': unknown"),
    ({"messages": [{"role": "user"}]}, "messages", "field 'messages[0].content': missing"),
    ({"instruction": "x", "instances": "nope"}, "self_instruct", "field 'instances'"),
])
def test_malformed_row_names_file_row_field(tmp_path, row, fmt, field):
    good = {"alpaca": {"instruction": "ok"}, "gsm8k": {"question": "ok", "answer": "1"},
            "sharegpt": {"conversations": [{"from": "human", "value": "ok"}]},
            "messages": {"messages": [{"role": "user", "content": "ok"}]},
            "self_instruct": {"instruction": "ok", "instances": []}}[fmt]
    path = _jsonl(tmp_path / "bad.jsonl", [good, row])
    with pytest.raises(InputError) as info:
        _rows(path, format=fmt)
    assert str(info.value).startswith("bad.jsonl:row 2: ") and field in str(info.value)


def test_invalid_json_line_and_skip_malformed_counts(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"instruction": "a"}\n{not json\n\n{"instruction": ""}\n{"instruction": "b"}\n')
    with pytest.raises(InputError, match=r"mixed.jsonl:row 2: field '<row>': invalid JSON"):
        _rows(path)
    report = LoadReport()
    rows = list(iter_seed_rows(SeedSource(path=str(path), skip_malformed=True), report))
    assert [r["id"] for r in rows] == ["mixed-1", "mixed-5"]
    assert report.as_dict() == {"rows": 2, "skipped": 2, "skipped_by_reason": {"alpaca: <row>": 1,
                                                                              "alpaca: instruction": 1}}


def test_unknown_shape_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="cannot tell the seed format"):
        _rows(_jsonl(tmp_path / "x.jsonl", [{"text": "hello"}]))
    with pytest.raises(InputError, match="no such seed file"):
        _rows(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match=r"cannot load 'no-such-org/no-such-dataset-xyz' \(hub dataset"):
        _rows("no-such-org/no-such-dataset-xyz")


def test_seeded_sample_keeps_file_order_and_is_reproducible(shared_data):
    path = shared_data / "gsm8k" / "train.jsonl"
    first = [r["id"] for r in _rows(path, sample=20, seed=1)]
    assert first == [r["id"] for r in _rows(path, sample=20, seed=1)]
    assert len(first) == len(set(first)) == 20
    assert first == sorted(first, key=lambda row_id: int(row_id.split("-")[1]))
    assert first != [r["id"] for r in _rows(path, sample=20, seed=2)]
    assert first != [f"train-{i}" for i in range(1, 21)]  # not the first 20
    report = LoadReport()
    list(iter_seed_rows(SeedSource(path=str(path), sample=5), report))
    assert report.rows == 5
    with pytest.raises(ValueError, match="either limit .* or sample"):
        SeedSource(path=str(path), limit=3, sample=3)


def test_sample_larger_than_file_keeps_every_row(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", [{"instruction": f"i{i}"} for i in range(3)])
    assert [r["id"] for r in _rows(path, sample=10)] == ["s-1", "s-2", "s-3"]


def test_not_utf8_names_row_and_byte_offset(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"instruction": "ok"}\n{"instruction": "caf\xe9"}\n')
    with pytest.raises(InputError) as info:
        _rows(path)
    assert str(info.value) == ("latin.jsonl:row 2: field '<row>': not UTF-8 text (byte offset 42 in the file) "
                               "(alpaca format)")
    array = tmp_path / "latin.json"
    array.write_bytes(b'[\n{"instruction": "ok"},\n{"instruction": "caf\xe9"}\n]\n')
    with pytest.raises(InputError, match=r"latin.json: line 3: not UTF-8 text \(byte offset 45\)"):
        _rows(array)


@pytest.mark.parametrize("content, why", [
    ("", "the source has no rows"),
    ("\n\n", "the source has no rows"),
    ("[]", "the source has no rows"),
    ('{"instruction": ""}\n', "all 1 rows were malformed and skipped"),
])
def test_no_seeds_is_an_input_error(tmp_path, content, why):
    path = tmp_path / ("empty.json" if content.startswith("[") else "empty.jsonl")
    path.write_text(content)
    with pytest.raises(InputError, match=f"no seeds \\({why}\\)"):
        _rows(path, skip_malformed=True)
