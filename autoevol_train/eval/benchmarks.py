"""The benchmarks `autoevol eval` runs and the evolve stage decontaminates against, in one list.

A benchmark is one module of this package with:

- ``NAME``: its key (the eval config's section, the decontamination entry's ``name``, ``<NAME>.jsonl``);
- ``Config``: a StrictModel with ``name: Literal[NAME]`` and its test set's location, its protocol options;
  the same model is the eval section and the decontamination entry, so a test set is described one way;
- ``async def run(config, context: EvalContext) -> BenchmarkResult``: answer, score, state the protocol;
- ``def decontamination_texts(config) -> Iterator[(item id, text)]``: what a training row must not contain.

To add a benchmark: write ``eval/<name>.py`` with those four, and add the module to `BENCHMARKS` below.
"""

from __future__ import annotations

from typing import Annotated, Union

from pydantic import Field

from autoevol_train.eval import alpaca_eval, gsm8k, humaneval, lm_harness, mt_bench

__all__ = ["BENCHMARKS", "BY_NAME", "BenchmarkConfig"]

BENCHMARKS = (gsm8k, humaneval, mt_bench, alpaca_eval, lm_harness)

BY_NAME = {module.NAME: module for module in BENCHMARKS}
# Any benchmark's config, told apart by its `name` (a decontamination entry: {name: gsm8k, path: ...}).
BenchmarkConfig = Annotated[Union[tuple(module.Config for module in BENCHMARKS)], Field(discriminator="name")]
