"""Subprocess for the vLLM offline-engine test (vLLM spawns workers: it needs a real file and a main guard).
Writes a JSON file with what the test asserts (vLLM logs to stdout)."""

import asyncio
import json
import sys

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.types import VLLMRole


async def main(model: str) -> dict:
    config = VLLMRole(model=model, dtype="bfloat16", max_tokens=16, temperature=0.8,
                    engine_kwargs={"enforce_eager": True, "enable_chunked_prefill": False,
                                   "max_model_len": 512})
    async with LLMPool({"evol": config}) as pool:
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
                "too_long_error": too_long.error}


if __name__ == "__main__":
    with open(sys.argv[2], "w") as out:
        json.dump(asyncio.run(main(sys.argv[1])), out)
