"""Subprocess for the vLLM offline-engine test (vLLM spawns workers: it needs a real file and a main guard),
its engine core in this process (`engine_process: false`).
Writes a JSON file with what the test asserts (vLLM logs to stdout).

The engine is built once and kept (`SharedEngines`, as `autoevol run` with `share_engines: true` does): a
second "stage" on a new event loop, with a role of other sampling settings, borrows the same engine."""

import asyncio
import json
import sys

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.engines import SharedEngines
from autoevol_train.llm.types import VLLMRole


def role(model: str, **sampling) -> VLLMRole:
    return VLLMRole(model=model, dtype="bfloat16", engine_kwargs={"enforce_eager": True, "enable_chunked_prefill":
                                                                 False, "max_model_len": 512},
                    engine_process=False, **sampling)


async def first_stage(model: str, engines: SharedEngines) -> dict:
    async with LLMPool({"evol": role(model, max_tokens=16, temperature=0.8)}, engines=engines) as pool:
        client = pool["evol"]
        msgs = [[{"role": "user", "content": f"item {i}"}] for i in range(12)]
        batch = await asyncio.gather(*[client.chat(m, n=2, seed=i) for i, m in enumerate(msgs)])
        again = await client.chat(msgs[0], n=2, seed=0)
        g1 = await client.chat_one(msgs[1], temperature=0.0)
        g2 = await client.chat_one(msgs[1], temperature=0.0)
        too_long = await client.chat_one([{"role": "user", "content": "word " * 2000}])
        return {"n_samples": [len(b) for b in batch],
                "seeded_equal": [c.text for c in batch[0]] == [c.text for c in again],
                "greedy_equal": g1.text == g2.text, "errors": pool.usage()["evol"]["errors"],
                "too_long_error": too_long.error, "greedy_text": g1.text, "engine": id(client._backend),
                "engine_core": type(client._backend._llm.llm_engine.engine_core).__name__}


async def next_stage(model: str, engines: SharedEngines) -> dict:
    async with LLMPool({"judge": role(model, max_tokens=16, temperature=0.0)}, engines=engines) as pool:
        answer = await pool["judge"].chat_one([{"role": "user", "content": "item 1"}])
        return {"greedy_text": answer.text, "engine": id(pool["judge"]._backend)}


if __name__ == "__main__":
    with SharedEngines() as engines:
        first = asyncio.run(first_stage(sys.argv[1], engines))
        second = asyncio.run(next_stage(sys.argv[1], engines))
    result = {**first, "next_stage_same_engine": first.pop("engine") == second["engine"],
              "next_stage_same_text": first.pop("greedy_text") == second["greedy_text"]}
    with open(sys.argv[2], "w") as out:
        json.dump(result, out)
