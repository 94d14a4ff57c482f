"""The LLM layer: real vLLM server and engine, transformers backend, faults, retries, journal, streaming."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole, TransformersRole
from tests.support.scripted_server import Faults, LatencyModel, Reply

HERE = Path(__file__).parent


def ask(n: int, i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"request number {i}"}]


# --- the real vLLM OpenAI server -------------------------------------------------------------------------

@pytest.mark.slow
def test_vllm_server_samples_seeds_and_labels(vllm_server, tmp_path):
    config = OpenAIRole(model="tiny", base_urls=[vllm_server], max_tokens=24, temperature=0.9)

    async def main():
        async with LLMPool({"evol": config}) as pool:
            client = pool["evol"]
            first = await client.chat(ask(1, 1), n=3, seed=7)
            again = await client.chat(ask(1, 1), n=3, seed=7)
            other = await client.chat(ask(1, 1), n=3, seed=8)
            greedy = await asyncio.gather(*[client.chat_one(ask(1, 2), temperature=0.0) for _ in range(4)])
            too_long = await client.chat_one([{"role": "user", "content": "word " * 3000}])
            short = await client.chat_one(ask(1, 3), max_tokens=2)
            return first, again, other, greedy, too_long, short, pool.usage()

    first, again, other, greedy, too_long, short, usage = asyncio.run(main())
    assert len(first) == 3 and [c.text for c in first] == [c.text for c in again]
    assert [c.text for c in first] != [c.text for c in other]
    assert len({c.text for c in first}) > 1  # n samples really differ
    assert len({c.text for c in greedy}) == 1
    # Too long for the model: a labelled failure with vLLM's reason, not retried, not raised.
    assert not too_long.ok and too_long.error.startswith("request_failed: http_400")
    # Truncated by max_tokens: the text is kept but labelled, never a silent good answer.
    assert short.finish_reason == "length" and short.error == "truncated" and not short.ok
    assert usage["evol"]["errors"]["truncated"] >= 1 and usage["evol"]["completion_tokens"] > 0
    assert usage["evol"]["retries"] == 0


@pytest.mark.slow
def test_vllm_server_through_journal_resumes_without_calls(vllm_server, tmp_path):
    config = OpenAIRole(model="tiny", base_urls=[vllm_server], max_tokens=16, temperature=0.7, seed=3)

    async def run(journal_path):
        journal = Journal(journal_path)
        async with LLMPool({"evol": config}, journal) as pool:
            out = await asyncio.gather(*[pool["evol"].chat(ask(2, i), n=2) for i in range(20)])
            return [[c.text for c in cs] for cs in out], pool.usage()["evol"]

    texts1, usage1 = asyncio.run(run(tmp_path / "calls.sqlite"))
    texts2, usage2 = asyncio.run(run(tmp_path / "calls.sqlite"))
    assert texts1 == texts2
    assert usage1["requests"] == 20 and usage2["requests"] == 0 and usage2["cached_samples"] == 40


@pytest.mark.slow
def test_vllm_offline_engine_backend(tiny_llama, tmp_path):
    """vLLM's offline engine in a subprocess (it spawns workers; needs a __main__ guard), kept for a second
    stage as `autoevol run` does with `share_engines: true`."""
    script = HERE / "helpers" / "vllm_offline_probe.py"
    out = subprocess.run([sys.executable, str(script), str(tiny_llama), str(tmp_path / "probe.json")],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    result = json.loads((tmp_path / "probe.json").read_text())
    assert result["n_samples"] == [2] * 12
    assert result["seeded_equal"] and result["greedy_equal"]
    assert result["errors"]["truncated"] >= 1  # max_tokens cuts the random model's text: labelled
    assert result["too_long_error"].startswith("request_failed: vLLM engine")
    # Kept across stages (share_engines): the next stage, on its own event loop, borrows the same engine.
    assert result["next_stage_same_engine"] and result["next_stage_same_text"]
    assert result["engine_core"] == "InprocClient"  # engine_process: false, and nothing else is needed for it


# --- in-process transformers backend (the quickstart's default) ------------------------------------------

def test_transformers_backend_is_deterministic_and_labels_truncation(tiny_llama):
    config = TransformersRole(model=str(tiny_llama), max_tokens=12, temperature=0.8, seed=1)

    async def main():
        async with LLMPool({"evol": config, "responder": config.model_copy(update={"temperature": 0.0})}) as pool:
            assert pool["evol"]._backend is pool["responder"]._backend  # one model in memory
            a = await pool["evol"].chat(ask(1, 1), n=2)
            b = await pool["evol"].chat(ask(1, 1), n=2)
            g1 = await pool["responder"].chat_one(ask(1, 2))
            g2 = await pool["responder"].chat_one(ask(1, 2))
            return a, b, g1, g2

    a, b, g1, g2 = asyncio.run(main())
    assert [c.text for c in a] == [c.text for c in b] and len(a) == 2
    assert g1.text == g2.text
    for completion in a + [g1]:
        assert completion.completion_tokens > 0
        assert (completion.finish_reason == "length") == (completion.error == "truncated")


# --- faults, retries, balancing on the scripted server ---------------------------------------------------

def test_fault_injection_1000_requests_none_lost_none_duplicated(scripted_server):
    server = scripted_server(faults=Faults(error_rate=0.05, hang_rate=0.01, malformed_rate=0.02, seed=1))
    # The timeout only has to cut the injected hangs; it is generous because the server shares this process's
    # GIL with 128 in-flight requests on a 2-core CI box, and a slower-than-timeout healthy attempt would be a
    # retry no fault explains.
    config = OpenAIRole(model="scripted", base_urls=[server.base_url], timeout_s=3.0, max_retries=8,
                        retry_initial_s=0.01, max_concurrency=64)

    async def main():
        async with LLMPool({"evol": config}) as pool:
            async def one(i):
                return i, await pool["evol"].chat_one(ask(1, i))
            results = [pair async for _, pair in stream_map(range(1000), one, max_in_flight=128)]
            return results, pool.usage()["evol"]

    results, usage = asyncio.run(main())
    assert sorted(i for i, _ in results) == list(range(1000))  # none lost, none duplicated
    for i, completion in results:
        if completion.ok:
            assert completion.text == f"request number {i}"  # each answer is its own request's
        else:
            assert completion.error.startswith("request_failed: gave up")
    assert sum(c.ok for _, c in results) >= 995
    assert server.counters.errors > 20 and server.counters.hangs > 3 and server.counters.malformed > 5
    assert usage["retries"] == server.counters.errors + server.counters.hangs + server.counters.malformed


def test_retries_give_up_with_a_reason_and_client_errors_are_not_retried(scripted_server):
    always_500 = scripted_server(lambda body, i: Reply(status=503, content="overloaded"))
    bad_request = scripted_server(lambda body, i: Reply(status=400, content="bad request"))
    config = OpenAIRole(model="m", base_urls=[always_500.base_url], max_retries=3, retry_initial_s=0.01)

    async def main():
        async with LLMPool({"a": config, "b": config.model_copy(update={"base_urls": [bad_request.base_url]})}) as pool:
            return await pool["a"].chat_one(ask(1, 0)), await pool["b"].chat_one(ask(1, 0)), pool.usage()

    failed, refused, usage = asyncio.run(main())
    assert failed.error.startswith("request_failed: gave up after 4 attempts: http_503")
    assert always_500.counters.requests == 4 and usage["a"]["retries"] == 3
    assert refused.error.startswith("request_failed: http_400") and bad_request.counters.requests == 1


def test_empty_and_length_answers_are_labelled(scripted_server):
    replies = {"empty": Reply(content="  "), "cut": Reply(content="half an ans", finish_reason="length")}
    server = scripted_server(lambda body, i: replies[body["messages"][-1]["content"]])

    async def main():
        async with LLMPool({"r": OpenAIRole(model="m", base_urls=[server.base_url])}) as pool:
            return [await pool["r"].chat_one([{"role": "user", "content": k}]) for k in ("empty", "cut")]

    empty, cut = asyncio.run(main())
    assert empty.error == "empty" and not empty.ok
    assert cut.error == "truncated" and cut.text == "half an ans"


def test_endpoints_are_balanced_by_load(scripted_server):
    fast = scripted_server(latency=LatencyModel(median_s=0.01, slots=8))
    slow = scripted_server(latency=LatencyModel(median_s=0.2, slots=8))
    config = OpenAIRole(model="m", base_urls=[fast.base_url, slow.base_url], max_concurrency=8)

    async def main():
        async with LLMPool({"r": config}) as pool:
            await asyncio.gather(*[pool["r"].chat_one(ask(1, i)) for i in range(200)])

    asyncio.run(main())
    assert fast.counters.requests + slow.counters.requests == 200
    assert fast.counters.requests > 2 * slow.counters.requests


def test_adaptive_limit_shrinks_under_429s_and_grows_back_with_spare_capacity(scripted_server):
    """An API that rejects requests beyond 4 waiting for its 4 slots: the endpoint's limit is cut below the
    role's ceiling and nothing is lost; once the server takes more, the limit grows again."""
    server = scripted_server(latency=LatencyModel(median_s=0.05, slots=4, max_waiting=4, retry_after_s=0.01))
    config = OpenAIRole(model="m", base_urls=[server.base_url], max_concurrency=64, max_retries=30,
                        retry_initial_s=0.01)

    async def main():
        async with LLMPool({"evol": config}) as pool:
            client = pool["evol"]
            limit = client._backend.limits[0]

            async def burst(first: int):
                return [c async for _, c in stream_map(range(first, first + 300),
                                                       lambda i: client.chat_one(ask(1, i)), max_in_flight=64)]
            crowded = await burst(0)
            after_429s, cuts = limit.limit, limit.cuts
            # The server now has spare capacity: it queues whatever it gets and serves fifty times faster (its
            # latency falls below the baseline the limit has learnt).
            server.latency.max_waiting, server.latency.median_s = None, 0.001
            spare = await burst(300)
            return crowded + spare, after_429s, cuts, limit.limit

    completions, after_429s, cuts, after_spare = asyncio.run(main())
    assert all(c.ok for c in completions) and len(completions) == 600  # nothing lost to the 429s
    assert server.counters.rate_limited > 0 and cuts > 0
    assert after_429s < 64
    assert after_spare > after_429s

    # adaptive_concurrency: false keeps max_concurrency fixed, whatever the server answers.
    server.latency.max_waiting, server.latency.median_s = 4, 0.05
    fixed = config.model_copy(update={"adaptive_concurrency": False})

    async def fixed_run():
        async with LLMPool({"evol": fixed}) as pool:
            out = await asyncio.gather(*[pool["evol"].chat_one(ask(1, i)) for i in range(100)])
            return out, pool["evol"]._backend.limits[0]

    rate_limited_before = server.counters.rate_limited
    out, limit = asyncio.run(fixed_run())
    assert all(c.ok for c in out) and server.counters.rate_limited > rate_limited_before
    assert (limit.limit, limit.cuts) == (64, 0)


def test_retry_after_is_honoured(scripted_server):
    """The server asks to come back in 0.5 s; the client's own back-off would have retried after ~0.01 s."""
    arrivals: dict[str, float] = {}

    def hold_first(body, index):
        content = body["messages"][-1]["content"]
        arrivals[content] = time.monotonic()
        if content == "first":
            time.sleep(0.3)
        return content

    server = scripted_server(hold_first, latency=LatencyModel(slots=1, max_waiting=0, retry_after_s=0.5))
    config = OpenAIRole(model="m", base_urls=[server.base_url], retry_initial_s=0.01, max_retries=3)

    async def main():
        async with LLMPool({"evol": config}) as pool:
            first = asyncio.ensure_future(pool["evol"].chat_one([{"role": "user", "content": "first"}]))
            while "first" not in arrivals:
                await asyncio.sleep(0.001)
            sent = time.monotonic()
            second = await pool["evol"].chat_one([{"role": "user", "content": "second"}])
            return await first, second, sent

    first, second, sent = asyncio.run(main())
    assert first.ok and second.ok and server.counters.rate_limited == 1
    assert arrivals["second"] - sent >= 0.5  # a lower bound: load can only make it later


def test_stream_map_has_no_barrier_and_bounds_items_in_flight():
    """Item 0 can only finish once the 19 others have: any barrier (per batch, per round) would deadlock,
    and the timeout turns that into a failure instead of a hang."""
    finished: list[int] = []
    others_done = asyncio.Event()
    in_flight = peak = 0

    async def item(i):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await (others_done.wait() if i == 0 else asyncio.sleep(0.01))
        finished.append(i)
        if len(finished) == 19:
            others_done.set()
        in_flight -= 1
        return i * i

    async def main():
        # each result with whether item 0 had finished when the consumer got it
        return [(pair, 0 in finished) async for pair in stream_map(range(20), item, max_in_flight=4)]

    out = asyncio.run(asyncio.wait_for(main(), timeout=30))
    assert sorted(pair for pair, _ in out) == [(i, i * i) for i in range(20)]
    assert peak == 4
    assert sum(not zero_done for _, zero_done in out) >= 17  # streamed to the consumer, not held for item 0


def test_stream_map_propagates_a_stage_bug_and_cancels_the_items_still_running():
    """An exception from the item coroutine is a bug in the stage: it reaches the consumer at once, and the items
    still running are cancelled, not left to finish (or hang) behind it."""
    cancelled: list[int] = []

    async def item(i):
        if i == 3:
            raise KeyError("field")
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise

    async def main():
        return [pair async for pair in stream_map(range(10), item, max_in_flight=5)]

    with pytest.raises(KeyError):
        asyncio.run(asyncio.wait_for(main(), timeout=10))
    assert sorted(cancelled) == [0, 1, 2, 4]  # the four others in flight; items 5-9 never started


def test_request_body_samples_and_usage_are_the_openai_sdks(scripted_server):
    """The transport (aiohttp, not the SDK) sends what the SDK sent: unset fields left out, `extra_body` on top;
    n samples come back in index order, usage counted once per response."""
    server = scripted_server(lambda body, i: f"sample {i}")
    config = OpenAIRole(model="m", base_urls=[server.base_url], stop=["###"], max_tokens=7, temperature=0.5,
                        extra_body={"top_k": 5}, preflight="off")

    async def main():
        async with LLMPool({"evol": config}) as pool:
            return await pool["evol"].chat(ask(3, 0), n=3), pool.usage()["evol"]

    samples, usage = asyncio.run(main())
    body = server.counters.bodies[0]
    assert body == {"model": "m", "messages": ask(3, 0), "n": 3, "temperature": 0.5, "top_p": 1.0,
                    "max_tokens": 7, "stop": ["###"], "top_k": 5}  # no seed: unset, as the SDK leaves it out
    assert [c.text for c in samples] == ["sample 0", "sample 1", "sample 2"] and all(c.ok for c in samples)
    assert samples[0].prompt_tokens == 3 and sum(c.prompt_tokens for c in samples) == 3
    assert usage["completion_tokens"] == 6 == sum(c.completion_tokens for c in samples)


def test_journal_answers_calls_before_their_commit_and_commits_them_on_flush(tmp_path):
    """Writes are batched off the event loop: a call handed to the journal is answered at once, and is in the
    database for any other reader once `flush` (or `close`) returns."""
    from autoevol_train.llm.journal import call_key
    from autoevol_train.llm.types import Completion, Sampling

    journal = Journal(tmp_path / "calls.sqlite")
    keys = [call_key("m", ask(1, i), Sampling(), 0) for i in range(100)]
    for i, key in enumerate(keys):
        journal.put(key, "evol", "m", {"messages": ask(1, i), "index": 0}, Completion(f"answer {i}", "stop"))
    assert journal.get(keys[7]) == Completion("answer 7", "stop") and journal.get(keys[7]).cached
    journal.flush()
    other = Journal(tmp_path / "calls.sqlite")
    assert len(other) == 100 and other.get(keys[99]).text == "answer 99"
    journal.put("late", "evol", "m", {}, Completion("late answer", "stop"))
    journal.close()
    assert other.get("late").text == "late answer"
    other.close()


# --- kill -9 and resume ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_identical_results_and_no_repeated_call(scripted_server, tmp_path):
    """A client run killed with SIGKILL mid-way; the re-run answers journaled calls from the journal."""
    server = scripted_server(lambda body, i: f"answer to {body['messages'][-1]['content']} #{i}",
                             latency=LatencyModel(median_s=0.02, sigma=0.5, slots=8, seed=2))
    script = HERE / "helpers" / "journal_client.py"
    cmd = [sys.executable, str(script), server.base_url, str(tmp_path / "calls.sqlite"),
           str(tmp_path / "out.json"), "300"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while server.counters.requests < 120 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.json").exists()
    journaled = len(Journal(tmp_path / "calls.sqlite"))  # readable after kill -9
    assert 0 < journaled < 600

    sent_before = server.counters.requests
    bodies_before = len(server.counters.bodies)
    subprocess.run(cmd, check=True, timeout=120)
    resent = [b["messages"][-1]["content"] for b in server.counters.bodies[bodies_before:]]
    # Each request asks n=2 samples: a request is re-issued only if neither sample was journaled.
    assert server.counters.requests - sent_before == 300 - journaled // 2
    journal_prompts = {json.loads(r)["messages"][-1]["content"] for r in _journal_requests(tmp_path)}
    assert len(resent) == len(set(resent))

    uninterrupted = tmp_path / "fresh"
    uninterrupted.mkdir()
    subprocess.run([sys.executable, str(script), server.base_url, str(uninterrupted / "calls.sqlite"),
                    str(uninterrupted / "out.json"), "300"], check=True, timeout=120)
    assert json.loads((tmp_path / "out.json").read_text()) == json.loads((uninterrupted / "out.json").read_text())
    assert len(journal_prompts) == 300


def _journal_requests(path: Path) -> list[str]:
    import sqlite3
    with sqlite3.connect(path / "calls.sqlite") as db:
        return [row[0] for row in db.execute("SELECT request FROM calls")]


# --- the package's structure ---------------------------------------------------------------------------------

def _package_import_graph(type_only: bool) -> dict[str, set[str]]:
    """module → the package modules it imports anywhere in its source (top level and inside functions, where
    heavy imports are deferred); with `type_only`, also those under ``if TYPE_CHECKING:``."""
    import ast

    root = HERE.parent / "autoevol_train"
    modules = {".".join(("autoevol_train", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {id(inner) for node in ast.walk(tree)
                       if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
                       for inner in ast.walk(node)}
        edges = graph.setdefault(name, set())
        for node in ast.walk(tree):
            if id(node) in typing_only and not type_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_package_has_no_import_cycles():
    """No cycle among the package's runtime imports; in the LLM layer not even through type-only imports
    (the backends import their config from types.py, never from client.py)."""
    runtime = _package_import_graph(type_only=False)
    assert "autoevol_train.llm.client" in runtime["autoevol_train.evol.evolve"]  # the walk sees imports
    assert _cycles(runtime) == []
    typed = _package_import_graph(type_only=True)
    llm = {m: {t for t in targets if t.startswith("autoevol_train.llm")}
           for m, targets in typed.items() if m.startswith("autoevol_train.llm")}
    assert "autoevol_train.llm.openai_backend" in llm["autoevol_train.llm.client"]  # lazy imports are walked
    assert _cycles(llm) == []


def test_backends_implement_the_protocol_and_are_typed():
    import inspect
    import typing

    from autoevol_train.llm.client import LLMClient
    from autoevol_train.llm.hf_backend import TransformersBackend
    from autoevol_train.llm.openai_backend import OpenAIBackend
    from autoevol_train.llm.types import Backend, VLLMRole
    from autoevol_train.llm.vllm_backend import VLLMBackend

    members = [name for name in vars(Backend) if not name.startswith("_")]
    assert {"generate", "aclose"} <= set(members)
    for backend in (OpenAIBackend, VLLMBackend, TransformersBackend):
        for member in members:
            assert inspect.iscoroutinefunction(getattr(backend, member)), (backend.__name__, member)
    assert typing.get_type_hints(LLMClient.__init__)["backend"] is Backend
    assert typing.get_type_hints(VLLMBackend.__init__)["config"] is VLLMRole


def test_role_configs_pick_their_model_by_backend_and_name_keys_as_written(tmp_path):
    from autoevol_train.config import ConfigError, StrictModel, load_config
    from autoevol_train.evol.optimize import OptimizeLLMConfig
    from autoevol_train.llm.types import RoleConfig, VLLMRole

    class Roles(StrictModel):
        a: RoleConfig
        b: RoleConfig | None = None

    path = tmp_path / "roles.yaml"
    path.write_text("a: {model: m}\nb: {backend: vllm, model: /models/m, dtype: bfloat16}\n")
    roles = load_config(Roles, path)
    assert isinstance(roles.a, OpenAIRole) and roles.a.base_urls == ["http://127.0.0.1:8000/v1"]
    assert isinstance(roles.b, VLLMRole) and roles.b.dtype == "bfloat16"
    for text, message in [("a: {model: m, max_tokens: many}", "roles.yaml: a.max_tokens: expected int"),
                          ("a: {backend: vllm, model: m, base_urls: [x]}", "roles.yaml: a.base_urls: unknown key"),
                          ("a: {backend: tgi, model: m}",
                           "roles.yaml: a.backend: Input should be 'openai', 'vllm' or 'transformers'")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(Roles, path)

    # The optimizer role keeps the paper's sampling as defaults, whatever the backend; set keys win.
    llm = OptimizeLLMConfig.model_validate({"evol": {"model": "m"}, "optimizer": {"model": "m", "top_p": 0.9}})
    assert (llm.optimizer.temperature, llm.optimizer.top_p, llm.optimizer.max_tokens) == (0.6, 0.9, 4096)
    assert llm.optimizer.timeout_s == 600.0 and llm.evol.temperature == 0.0
    local = OptimizeLLMConfig.model_validate({"evol": {"model": "m"},
                                              "optimizer": {"backend": "transformers", "model": "m"}})
    assert isinstance(local.optimizer, TransformersRole) and local.optimizer.temperature == 0.6
