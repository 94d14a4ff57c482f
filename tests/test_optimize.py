"""The optimisation loop: exact semantics on the scripted server, resume after SIGKILL, parallelism, bad input,
and the whole loop on the real vLLM server with the tiny model."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest
import yaml

from autoevol_train.config import InputError, load_config
from autoevol_train.errors import ResultError
from autoevol_train.evol.methods import initial_method
from autoevol_train.evol.optimize import OptimizeConfig, extract_optimized_method, run_optimize
from tests.support.scripted_server import LatencyModel, Reply

REPO = Path(__file__).resolve().parents[1]
SUFFIX = " Show every step and state the units of the result."
LOST = "Work out the answer to the word problem."
KEEP, LABEL, BREAK, ERRORS = "KEEP-ALL-NUMBERS", "ALWAYS-LABEL", "NO-LABEL", "HTTP-400-INSTEAD"


def kind(instruction: str) -> str:
    """How the scripted evol LLM treats a seed: A loses its numbers unless the method says KEEP-ALL-NUMBERS,
    B comes back without the final label unless the method says ALWAYS-LABEL, C is always answered with a
    question (a failure no method fixes), the rest evolve fine."""
    bucket = zlib.crc32(instruction.encode()) % 10
    return "A" if bucket < 3 else "B" if bucket < 5 else "C" if bucket == 5 else "ok"


def evol_rule(messages: list[dict]) -> Reply | str:
    content = messages[-1]["content"]
    if "#Instruction#:\n" not in content:  # an answer request: the content is an evolved instruction
        if content == LOST:
            return "I can do that; please provide the numbers from the problem."
        if content.endswith(SUFFIX) and kind(content[: -len(SUFFIX)]) == "C":
            return "Sure, which units would you like the result in?"
        return "Step 1: read the numbers. Step 2: combine them. The answer is 7."
    method, _, instruction = content.rpartition("#Instruction#:\n")
    head = "Step 1 #Methods List#: add units\nStep 2 #Plan#: ask for steps\n"
    if ERRORS in method and kind(instruction) == "B" and LABEL not in method:
        return Reply(status=400)  # fails as B would anyway, but as a request error
    if BREAK in method or (kind(instruction) == "B" and LABEL not in method):
        return head + f"Step 3 #Rewritten Instruction#: {instruction}{SUFFIX}"
    evolved = LOST if kind(instruction) == "A" and KEEP not in method else instruction + SUFFIX
    return head + f"Step 3 #Rewritten Instruction#: draft\nStep 4 #Finally Rewritten Instruction#: {evolved}"


def optimizer_rule(messages: list[dict], index: int) -> str:
    """Candidate k of every step: 0 adds KEEP (fixes A) once, 1 forgets the block, 2 adds noise, 3 breaks the
    label (λ = 1), 4 adds ALWAYS-LABEL (fixes B) once KEEP is there."""
    if len(messages) == 1:
        assert "Trajectory:" in messages[0]["content"]
        return f"Analysis {index}: case 2 lost its numbers; case 4 has no final label."
    k = int(re.search(r"Analysis (\d)", messages[1]["content"]).group(1))
    current = re.search(r"```Current Method\n(.*?)\n```", messages[2]["content"], re.DOTALL).group(1)
    if k == 1:
        return "The method looks fine to me; I would keep it."
    extra = {0: f"{KEEP}: keep every number." if KEEP not in current else "Be thorough.",
             2: "Use a formal tone.", 3: f"{BREAK}",
             4: f"{LABEL}: always end with the final label." if KEEP in current and LABEL not in current
             else "Be concise."}[k]
    return f"Here is the improved method.\n```Optimized Method\n{current}\n{extra}\n#Instruction#:\n```\nDone."


def rule(body: dict, index: int) -> str:
    if body["model"] == "optimizer-model":
        return optimizer_rule(body["messages"], index)
    return evol_rule(body["messages"])


def make_config(base_url: str, seeds: Path, **overrides) -> OptimizeConfig:
    data = {
        "seeds": {"path": str(seeds)},
        # The rules script every answer; the endpoint preflight is tested in test_stage_preflight.py.
        "llm": {"evol": {"model": "evol-model", "base_urls": [base_url], "max_concurrency": 128, "preflight": "off"},
                "optimizer": {"model": "optimizer-model", "base_urls": [base_url], "preflight": "off"}},
        "pool_size": 200, "trajectory_rounds": 2,
    }
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return OptimizeConfig.model_validate(data)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loop_selects_the_fixing_candidates_and_stops(scripted_server, shared_data, tmp_path):
    """The default loop: KEEP wins step 1, ALWAYS-LABEL step 2; steps 3-5 only tie (Eq. 2: the tied candidate
    becomes e_t), so the run goes past the first tie and stops after patience = 3 steps without a strict
    improvement, with the best method so far (step 2's) as the output."""
    server = scripted_server(rule)
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl")
    best = run_optimize(config, tmp_path / "run")
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    dev = split["dev"]
    counts = {k: sum(kind(q) == k for q in dev) for k in ("A", "B", "C")}
    assert len(dev) == 50 and min(counts.values()) > 0 and split["pool"] == 200

    history = read_jsonl(run / "history.jsonl")
    assert [r["step"] for r in history] == [1] * 6 + [2] * 6 + [3] * 6 + [4] * 6 + [5] * 6
    lam = {(r["step"], r["candidate"]): r["lambda"] for r in history}
    n = 50
    assert lam[1, "incumbent"] == (counts["A"] + counts["B"] + counts["C"]) / n
    assert lam[1, 0] == lam[2, "incumbent"] == (counts["B"] + counts["C"]) / n   # KEEP fixes A
    assert lam[1, 3] == lam[2, 3] == 1.0 and lam[1, 1] is None                   # breaks / no block
    assert lam[2, 4] == lam[3, "incumbent"] == counts["C"] / n                   # ALWAYS-LABEL fixes B
    assert [r["name"] for r in history if r["selected"]] == ["step1/cand0", "step2/cand4", "step3/cand0",
                                                             "step4/cand0", "step5/cand0"]
    assert all(lam[s, 0] == lam[s, 2] == lam[s, 4] == counts["C"] / n for s in (3, 4, 5))  # ties: lowest index
    by_key = {(r["step"], r["candidate"]): r for r in history}
    assert by_key[1, "incumbent"]["failures"] == {"parse_failure": counts["B"], "response_asks_back": counts["C"],
                                                  "response_please_provide": counts["A"]}
    assert by_key[1, 1]["status"] == "no_method_block" and by_key[1, 1]["method_id"] is None
    assert by_key[1, 0]["feedback"].startswith("Analysis 0:")
    assert by_key[2, 4]["parent_id"] == by_key[1, 0]["method_id"] == by_key[2, "incumbent"]["method_id"]
    assert all(r["tokens"]["dev"] > 0 and r["wall_s"] > 0 for r in history if r["lambda"] is not None)
    assert by_key[1, "incumbent"]["tokens"]["trajectory"] > 0 and by_key[1, 0]["tokens"]["optimizer"] > 0

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["stop_reason"] == "no_improvement"
    assert manifest["steps_run"] == 5 and manifest["best_lambda"] == counts["C"] / n
    assert manifest["best_method_name"] == "step2/cand4" and manifest["final_method_name"] == "step5/cand0"
    text = best.read_text()
    assert best == run / "best_method.txt" and KEEP in text and LABEL in text and "#Instruction#" not in text[-40:]
    assert (run / "methods" / "step02_cand4.txt").read_text() == text
    assert (run / "final_method.txt").read_text() == (run / "methods" / "step05_cand0.txt").read_text() != text
    assert not (run / "methods" / "step01_cand1.txt").exists()
    assert "The method looks fine to me" in (run / "optimizer" / "step01_cand1.md").read_text()

    # The trajectory: mini-batch items disjoint from dev, shown as {id, stage0, stage1, stage2}.
    trajectory = json.loads((run / "trajectories" / "step01.json").read_text())
    assert not set(trajectory["batch"]) & set(dev) and len(trajectory["batch"]) == 10
    shown = trajectory["shown_to_optimizer"]
    assert [r["id"] for r in shown] == list(range(1, 11)) and all(r["stage0"] in trajectory["batch"] for r in shown)
    assert any("[no usable rewrite: parse_failure]" in json.dumps(r) for r in shown) or counts["B"] == 0
    # Incumbent and challengers were scored on the same dev set.
    dev_rows = read_jsonl(run / "dev" / "step01.jsonl")
    for label in ("incumbent", "0", "2", "3", "4"):
        assert [r["original"] for r in dev_rows if r["candidate"] == label] == dev

    # Sampling as in the paper: evol greedy, optimizer m=5 samples at T=0.6, top-p 0.95.
    analysis = [b for b in server.counters.bodies if b["model"] == "optimizer-model" and len(b["messages"]) == 1]
    assert len(analysis) == 5 and all(b["n"] == 5 and b["temperature"] == 0.6 and b["top_p"] == 0.95
                                      for b in analysis)
    assert all(b["temperature"] == 0.0 for b in server.counters.bodies if b["model"] == "evol-model")

    report = (run / "report.md").read_text()
    assert "step1/cand0" in report and f"+{KEEP}: keep every number." in report
    assert f"+{LABEL}: always end with the final label." in report and "response_asks_back" in report
    assert "best so far `step2/cand4`" in report and "Successful evolutions" in report
    assert "<table>" in (run / "report.html").read_text()
    assert (run / "lambda.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def tie_then_improve(body: dict, index: int) -> Reply | str:
    """Step 1: three candidates that only tie the start (0 with request errors, 1 and 2 identical); step 2:
    0 breaks the label, 1 and 2 add KEEP (an equal strict improvement)."""
    if body["model"] != "optimizer-model":
        return evol_rule(body["messages"])
    if len(body["messages"]) == 1:
        return f"Analysis {index}"
    k = int(body["messages"][1]["content"].split()[-1])
    current = re.search(r"```Current Method\n(.*?)\n```", body["messages"][2]["content"], re.DOTALL).group(1)
    if "Be thorough." not in current:
        extra = f"{ERRORS} Be thorough." if k == 0 else "Be thorough."
    else:
        extra = BREAK if k == 0 else f"{KEEP}: keep every number."
    return f"```Optimized Method\n{current}\n{extra}\n```"


def test_a_tie_then_an_improvement_runs_on_and_outputs_the_improvement(scripted_server, shared_data, tmp_path):
    """Eq. 2 with a deterministic tie-break: step 1's candidates all tie the start, so the one with fewer
    request errors, then the lower index, becomes e_1 (the output stays the start); the default stopping rule
    does not end the run on that tie, and step 2's strict improvement becomes the output."""
    server = scripted_server(tie_then_improve)
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl", candidates=3, steps=2,
                         dev_size=20, pool_size=60, batch_size=4, trajectory_rounds=1)
    best = run_optimize(config, tmp_path / "run")
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    dev = json.loads((tmp_path / "run" / "split.json").read_text())["dev"]
    assert sum(kind(q) == "A" for q in dev) > 0 and sum(kind(q) == "B" for q in dev) > 0
    lam = {(r["step"], r["candidate"]): r["lambda"] for r in history}
    by_key = {(r["step"], r["candidate"]): r for r in history}
    assert lam[1, "incumbent"] == lam[1, 0] == lam[1, 1] == lam[1, 2]                  # a three-way tie
    assert by_key[1, 0]["failures"]["evol_request_failed"] > 0 and "evol_request_failed" not in by_key[1, 1]["failures"]
    assert lam[2, 1] == lam[2, 2] < lam[2, "incumbent"] == lam[1, 1] and lam[2, 0] == 1.0
    assert [r["name"] for r in history if r["selected"]] == ["step1/cand1", "step2/cand1"]
    assert by_key[2, "incumbent"]["method_id"] == by_key[1, 1]["method_id"]            # e_1 = the tied candidate
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stop_reason"] == "max_steps" and manifest["steps_run"] == 2
    assert manifest["best_method_name"] == "step2/cand1" and manifest["best_lambda"] == lam[2, 1]
    assert best.read_text() == (tmp_path / "run" / "methods" / "step02_cand1.txt").read_text()
    assert (tmp_path / "run" / "final_method.txt").read_text() == best.read_text()  # e_2 is the best
    assert KEEP in best.read_text() and ERRORS not in best.read_text()


@pytest.mark.parametrize("dead", ["optimizer", "answers"])
def test_request_errors_everywhere_are_a_result_error_not_a_crowned_start(dead, scripted_server, shared_data,
                                                                          tmp_path):
    """Every candidate failed for request errors (the optimizer answers HTTP 400), or the incumbent did (every
    answer call fails): exit 4 with the breakdown, a failed manifest, and no best_method.txt at λ = 1."""
    def failing(body: dict, index: int) -> Reply | str:
        if dead == "optimizer" and body["model"] == "optimizer-model":
            return Reply(status=400)
        answering = body["model"] == "evol-model" and "#Instruction#:\n" not in body["messages"][-1]["content"]
        if dead == "answers" and answering:
            return Reply(status=400)
        return rule(body, index)

    server = scripted_server(failing)
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl", dev_size=20, pool_size=60,
                         batch_size=4, trajectory_rounds=1)
    expected = {"optimizer": r"candidates failed for request errors only \(incumbent initial: parse_failure \d+, .*; "
                             r"candidates: analysis_failed: request_failed: http_400 ×5\)",
                "answers": r"incumbent failed for request errors only \(incumbent initial: parse_failure \d+, "
                           r"response_request_failed \d+; candidates: parse_failure"}[dead]
    with pytest.raises(ResultError, match=r"optimize step 1: the " + expected):
        run_optimize(config, tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "request errors only" in manifest["error"]
    assert not (tmp_path / "run" / "best_method.txt").exists() and not (tmp_path / "run" / "history.jsonl").exists()
    assert (tmp_path / "run" / "dev" / "step01.jsonl").exists()  # the evidence stays for inspection


def test_official_code_options(scripted_server, shared_data, tmp_path):
    """l = 1, a new dev sample per step, length-weighted selection: the same fixes win, no early stop."""
    server = scripted_server(rule)
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl", trajectory_rounds=1,
                         dev_sampling="per_step", selection="length_weighted", steps=2, early_stopping=False,
                         dev_size=20, pool_size=60)
    run_optimize(config, tmp_path / "run")
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    shown = json.loads((tmp_path / "run" / "trajectories" / "step01.json").read_text())["shown_to_optimizer"]
    assert all(set(r) <= {"id", "stage0", "stage1"} for r in shown)
    devs = [[r["original"] for r in read_jsonl(tmp_path / "run" / "dev" / f"step0{s}.jsonl")
             if r["candidate"] == "incumbent"] for s in (1, 2)]
    assert devs[0] != devs[1] and len(devs[0]) == 20
    assert all(r["score"] <= 0 for r in history if r["score"] is not None)  # negated success × length ratio
    assert [r["name"] for r in history if r["selected"]][0] == "step1/cand0"
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["stop_reason"] == "max_steps"


def test_every_call_of_a_phase_is_in_flight_at_once(scripted_server, shared_data, tmp_path):
    """Concurrency by structure, not by the clock: every call holds its server thread for 0.5 s, and the server
    counts calls in flight by what they ask. A step keeps the whole width of each phase in flight: the 6
    trajectories of the batch beside the incumbent's 16 dev evolutions, the m optimisation calls, then the dev
    evolutions of every candidate at once (16 each), where a serial or per-candidate loop would hold 1 or 16."""
    lock = threading.Lock()
    in_flight, peak = Counter(), Counter()
    incumbent = initial_method().render("")  # the evolution prompt up to the instruction

    def holding_rule(body: dict, index: int) -> str:
        content = body["messages"][-1]["content"]
        if index == 0 and (body["model"] == "optimizer-model" or "#Instruction#:\n" in content):
            with lock:
                what = ("optimizer" if body["model"] == "optimizer-model"
                        else "incumbent" if content.startswith(incumbent) else "candidates")
                in_flight[what] += 1
                peak[what] = max(peak[what], in_flight[what])
            time.sleep(0.5)
            with lock:
                in_flight[what] -= 1
        return rule(body, index)

    server = scripted_server(holding_rule)
    # A fixed concurrency: the adaptive limit starts at 8 per endpoint and would cap what the stage puts in flight.
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl", steps=1, dev_size=16,
                         pool_size=40, batch_size=6, candidates=5, **{"llm.evol.adaptive_concurrency": False})
    run_optimize(config, tmp_path / "run")
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    evaluated = sum(r["candidate"] != "incumbent" and r["lambda"] is not None for r in history)
    assert evaluated == 4  # candidate 1 writes no method block
    assert peak == {"incumbent": 6 + 16, "optimizer": 5, "candidates": evaluated * 16}, peak


def test_resume_after_sigkill_in_step_3_gives_the_same_history(scripted_server, shared_data, tmp_path):
    server = scripted_server(rule, latency=LatencyModel(median_s=0.03))
    overrides = dict(steps=4, early_stopping=False, dev_size=20, pool_size=60, batch_size=4, trajectory_rounds=1)
    config = make_config(server.base_url, shared_data / "gsm8k" / "train.jsonl", **overrides)
    config_file = tmp_path / "optimize.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    killed = tmp_path / "killed"
    log = open(tmp_path / "child.log", "w")
    child = subprocess.Popen([sys.executable, "-m", "autoevol_train.cli", "optimize", str(config_file),
                              "--output-dir", str(killed)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    journal_rows = 0
    try:
        while time.monotonic() < deadline and child.poll() is None:
            history = killed / "history.jsonl"
            if history.exists() and {r["step"] for r in read_jsonl(history)} == {1, 2}:
                if journal_rows == 0:
                    journal_rows = _journal_rows(killed)
                elif _journal_rows(killed) > journal_rows + 10:  # step 3 has made calls
                    break
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL, (tmp_path / "child.log").read_text()[-2000:]
    assert {r["step"] for r in read_jsonl(killed / "history.jsonl")} == {1, 2}
    before = server.counters.requests
    run_optimize(load_config(OptimizeConfig, config_file), killed)
    resumed_requests = server.counters.requests - before

    before = server.counters.requests
    run_optimize(config, tmp_path / "uninterrupted")
    full_requests = server.counters.requests - before

    def comparable(path: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("wall_s", "phase_s")} for r in read_jsonl(path)]

    resumed = comparable(killed / "history.jsonl")
    assert resumed == comparable(tmp_path / "uninterrupted" / "history.jsonl")
    assert [r["step"] for r in resumed][-1] == 4
    assert 0 < resumed_requests < full_requests
    assert (killed / "best_method.txt").read_text() == (tmp_path / "uninterrupted" / "best_method.txt").read_text()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["attempts"] == 2 and manifest["status"] == "completed"


def _journal_rows(run: Path) -> int:
    path = run / "calls.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]


def test_bad_input_is_an_input_error_before_anything_is_written(shared_data, tmp_path):
    good = make_config("http://127.0.0.1:9/v1", shared_data / "gsm8k" / "train.jsonl").model_dump(mode="json")
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({**good, "candidate": 5}))
    with pytest.raises(InputError, match="bad.yaml: candidate: unknown key"):
        load_config(OptimizeConfig, config_file)
    config_file.write_text(yaml.safe_dump(good))
    with pytest.raises(InputError, match="llm.optimizer.temperature: expected float"):
        load_config(OptimizeConfig, config_file, ["llm.optimizer.temperature=hot"])

    def fails(match: str, **overrides) -> None:
        config = make_config("http://127.0.0.1:9/v1", shared_data / "gsm8k" / "train.jsonl", **overrides)
        with pytest.raises(InputError, match=match):
            run_optimize(config, tmp_path / "out")
        assert not (tmp_path / "out").exists()

    fails("no such seed file", **{"seeds.path": str(tmp_path / "missing.jsonl")})
    fails(r"train.jsonl:row 1: field 'instruction': missing \(alpaca format\)", **{"seeds.format": "alpaca"})
    fails("no such method file", initial_method=str(tmp_path / "method.txt"))
    rows = tmp_path / "seeds.jsonl"
    rows.write_text('{"question": "What is 2+2?", "answer": "4"}\n{"question": "  ", "answer": "5"}\n')
    fails(r"seeds.jsonl:row 2: field 'question': empty \(gsm8k format\)", **{"seeds.path": str(rows)})
    rows.write_text("".join(json.dumps({"question": f"q{i % 30}", "answer": "1"}) + "\n" for i in range(100)))
    fails("30 distinct instructions, but dev_size \\+ batch_size = 60", **{"seeds.path": str(rows)})


def test_code_alpaca_seeds_join_instruction_and_input(shared_data):
    from autoevol_train.data.formats import SeedSource
    from autoevol_train.evol.optimize import load_seed_instructions

    seeds, source = load_seed_instructions(SeedSource(path=str(shared_data / "seeds" / "code_alpaca_2k.json"),
                                                      format="code_alpaca"))
    raw = json.loads((shared_data / "seeds" / "code_alpaca_2k.json").read_text())
    with_input = next(r for r in raw if r["input"].strip())
    assert f"{with_input['instruction'].strip()}\n\n{with_input['input'].strip()}" in seeds  # as data.formats joins them
    assert len(seeds) == len({(r["instruction"].strip(), r["input"].strip()) for r in raw})
    assert source.endswith("code_alpaca_2k.json")


@pytest.mark.parametrize("reply, method", [
    ("```Optimized Method\nStep 1 ...\n```", "Step 1 ..."),
    ("**Optimized Method**:\n```\nA\nB\n```", "A\nB"),
    ("```optimized_method\nOld\n```\nbetter:\n```Optimized Method\nNew\n#Instruction#:\n{instruction}\n```", "New"),
    ("```python\nprint(1)\n```", None),
    ("Optimized Method: make it harder", None),
    ("```Optimized Method\n\n```", None),
])
def test_extract_optimized_method(reply, method):
    assert extract_optimized_method(reply) == method


@pytest.mark.slow
def test_loop_on_the_real_vllm_server(vllm_server, shared_data, tmp_path):
    """Junk text from a tiny random model, but every call, parse failure and failure reason is recorded."""
    config = OptimizeConfig.model_validate({
        "seeds": {"path": str(shared_data / "gsm8k" / "train.jsonl")},
        # A random model rarely stops on its own: stopping at the letter "e" gives finished (junk) answers,
        # so parsing and the optimizer's second turn are exercised, not only truncation.
        "llm": {"evol": {"model": "tiny", "base_urls": [vllm_server], "max_tokens": 48, "stop": ["e"]},
                "optimizer": {"model": "tiny", "base_urls": [vllm_server], "max_tokens": 32, "seed": 1,
                              "stop": ["e"]}},
        "initial_method": "weak", "pool_size": 40, "dev_size": 6, "batch_size": 1, "trajectory_rounds": 2,
        "candidates": 2, "steps": 2, "early_stopping": False,
    })
    run = tmp_path / "run"
    run_optimize(config, run)
    history = read_jsonl(run / "history.jsonl")
    assert sorted({r["step"] for r in history}) == [1, 2] and len(history) == 6
    for row in history:
        if row["candidate"] == "incumbent" or row["status"] == "ok":
            assert sum(row["failures"].values()) == round(row["lambda"] * 6)
        else:
            assert row["status"].startswith(("no_method_block", "analysis_failed", "optimization_failed"))
            assert (run / "optimizer" / f"step0{row['step']}_cand{row['candidate']}.md").exists()
    assert any("parse_failure" in r["failures"] for r in history)
    assert any(r["status"] == "no_method_block" for r in history)  # the whole conversation fits in 1024 tokens
    dev_rows = read_jsonl(run / "dev" / "step01.jsonl")
    candidates = [r for r in history if r["step"] == 1 and r["candidate"] != "incumbent"]
    assert len(dev_rows) == 6 * (1 + sum(r["status"] == "ok" for r in candidates))
    for row in dev_rows:
        assert row["evol_output"] or row["reason"].startswith("evol_")
        if row["reason"] is None or row["reason"].startswith("response_"):
            assert row["evolved"] is not None and row["response"] is not None
        else:
            assert row["reason"] in ("parse_failure", "evol_truncated", "evol_empty") and row["response"] is None
    manifest = json.loads((run / "manifest.json").read_text())
    usage = manifest["llm_usage"]
    assert manifest["status"] == "completed"
    assert usage["evol"]["samples"] >= 2 * (1 + 6) and usage["optimizer"]["samples"] >= 2 * 2
    with sqlite3.connect(run / "calls.sqlite") as db:
        roles = dict(db.execute("SELECT role, COUNT(*) FROM calls GROUP BY role").fetchall())
    assert roles["evol"] > 0 and roles["optimizer"] >= 2
    assert (run / "report.html").exists() and (run / "lambda.png").exists()


@pytest.mark.slow
def test_evol_on_vllm_and_optimizer_on_another_server(vllm_server, scripted_server, shared_data, tmp_path):
    """The two roles on two servers (docs/optimize.md): the real vLLM server evolves and answers, a second
    server plays the optimizer, so every candidate is scored on the real model's outputs."""
    optimizer = scripted_server(lambda body, index: "```Optimized Method\n" + re.search(
        r"```Current Method\n(.*?)\n```", body["messages"][-1]["content"], re.DOTALL).group(1)
        + f"\nVariant {index}: keep every number.\n```" if len(body["messages"]) == 3 else f"Analysis {index}")
    config = OptimizeConfig.model_validate({
        "seeds": {"path": str(shared_data / "seeds" / "code_alpaca_2k.json"), "format": "code_alpaca"},
        "llm": {"evol": {"model": "tiny", "base_urls": [vllm_server], "max_tokens": 48, "stop": ["e"]},
                "optimizer": {"model": "big", "base_urls": [optimizer.base_url],  # counts below: the loop's own
                              "preflight": "off"}},
        "initial_method": "weak", "pool_size": 30, "dev_size": 8, "batch_size": 2, "trajectory_rounds": 1,
        "candidates": 3, "steps": 1,
    })
    run_optimize(config, tmp_path / "run")
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert [r["status"] for r in history] == ["ok"] * 4
    assert all(sum(r["failures"].values()) == round(r["lambda"] * 8) for r in history)
    dev_rows = read_jsonl(tmp_path / "run" / "dev" / "step01.jsonl")
    assert len(dev_rows) == 4 * 8 and all(r["evol_output"] or r["reason"].startswith("evol_") for r in dev_rows)
    assert optimizer.counters.requests == 1 + 3  # one analysis request with n=3, three rewrites
    assert all(b["model"] == "big" for b in optimizer.counters.bodies)


RECIPES = sorted((REPO / "recipes").glob("*/*/optimize.yaml"))


def test_recipes_exist_for_every_model_and_domain():
    # one per domain: the optimised method does not depend on the model fine-tuned later
    assert {p.relative_to(REPO / "recipes").parent.as_posix() for p in RECIPES} == {
        "domains/chat", "domains/math", "domains/code"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.parent.relative_to(REPO / "recipes").as_posix())
def test_recipe_has_the_paper_settings(recipe):
    config = load_config(OptimizeConfig, recipe)
    sizes = (config.pool_size, config.dev_size, config.batch_size, config.candidates, config.steps)
    assert sizes == (2000, 50, 10, 5, 10)
    sampling = (config.llm.optimizer.temperature, config.llm.optimizer.top_p, config.llm.evol.temperature)
    assert sampling == (0.6, 0.95, 0.0)
    assert config.selection == "failure_rate" and config.dev_sampling == "fixed" and not config.failures.elimination
    assert not Path(config.seeds.path).exists()  # a hub dataset name, for users


@pytest.mark.parametrize("domain, seeds", [("math", "gsm8k/train.jsonl"), ("code", "seeds/code_alpaca_2k.json")])
def test_recipe_runs_offline_on_shared_data(domain, seeds, scripted_server, shared_data, tmp_path):
    server = scripted_server(rule)
    overrides = [f"seeds.path={shared_data / seeds}", "seeds.hub_config=null", "pool_size=120", "steps=1",
                 "trajectory_rounds=1"]
    for role in ("evol", "optimizer"):
        overrides += [f"llm.{role}.model={role}-model", f"llm.{role}.base_urls=[{server.base_url}]",
                      f"llm.{role}.api_key_env=null", f"llm.{role}.preflight=off"]
    config = load_config(OptimizeConfig, REPO / "recipes" / "domains" / domain / "optimize.yaml", overrides)
    run_optimize(config, tmp_path / "run")
    history = read_jsonl(tmp_path / "run" / "history.jsonl")
    assert len(history) == 6 and [r["name"] for r in history if r["selected"]] == ["step1/cand0"]
