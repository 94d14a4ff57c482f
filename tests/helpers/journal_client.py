"""Subprocess for the kill-and-resume test: N requests (n=2 each) through a journaled client, then a JSON
of every answer. Killed with SIGKILL mid-way by the test, then re-run on the same journal."""

import asyncio
import json
import sys
from pathlib import Path

from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.journal import Journal
from autoevol_train.llm.scheduler import stream_map
from autoevol_train.llm.types import OpenAIRole
from autoevol_train.rundir import write_atomic


async def main(base_url: str, journal_path: str, out_path: str, count: int) -> None:
    config = OpenAIRole(model="scripted", base_urls=[base_url], max_concurrency=8, temperature=0.5, seed=1)
    async with LLMPool({"evol": config}, Journal(journal_path)) as pool:
        async def one(i):
            return [c.text for c in await pool["evol"].chat([{"role": "user", "content": f"q{i}"}], n=2)]
        answers = {i: texts async for i, texts in stream_map(range(count), one, max_in_flight=16)}
    write_atomic(Path(out_path), json.dumps([answers[i] for i in range(count)]))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
