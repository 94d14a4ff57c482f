"""SFT efficiency on one tiny recipe: packed-token efficiency, and wall time against plain `trl sft`.

1. Token efficiency (non-pad tokens ÷ tokens the model processes, over one epoch of the trainer's own
   dataloader, no forward pass): our default where packing is exact (varlen/flash attention: bfd packing,
   padding-free) against TRL unpacked (rows padded to the longest in each batch), on the same GSM8K
   conversations with the same template, max length and batch size.
2. Wall time of the same tiny training (same model, data, steps, batch, lr; CPU, fp32) through our entry point
   (`scripts/run_sft.py`: validation, training template, assistant-only loss, save + generation config) and
   through plain `trl sft` — both full subprocesses, start-up and save included.
3. How fast `autoevol run` rejects a pipeline whose training override is misspelt (checked on load).

    python benchmarks/bench_sft.py [--rows 256] [--out bench_sft.json]     # ~1-2 min on 2 CPU cores
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

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def write_dataset(directory: Path, rows: int) -> Path:
    """GSM8K problems with their worked answers, in the evolve stage's dataset layout."""
    from autoevol_train.data.writers import ParquetShardWriter

    writer = ParquetShardWriter(directory, "train")
    for number, line in enumerate((SHARED_DATA / "gsm8k" / "train.jsonl").read_text().splitlines()[:rows]):
        item = json.loads(line)
        writer.write({"id": str(number), "messages": [{"role": "user", "content": item["question"]},
                                                      {"role": "assistant", "content": item["answer"]}]})
    writer.close()
    return directory


def token_efficiency(model: Path, data: Path, packing: bool, max_length: int, batch: int, work: Path) -> dict:
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model)
    args = SFTConfig(output_dir=str(work), use_cpu=True, bf16=False, max_length=max_length, packing=packing,
                     assistant_only_loss=True, per_device_train_batch_size=batch, report_to="none")
    train = datasets.load_dataset("parquet", data_files=sorted(str(p) for p in (data / "data").glob("*.parquet")),
                                  split="train")
    trainer = SFTTrainer(model=str(model), args=args, train_dataset=train, processing_class=tokenizer)
    real = processed = steps = 0
    for batch_ in trainer.get_train_dataloader():
        processed += batch_["input_ids"].numel()
        real += int(batch_["attention_mask"].sum()) if "attention_mask" in batch_ else batch_["input_ids"].numel()
        steps += 1
    return {"steps_per_epoch": steps, "processed_tokens": processed, "real_tokens": real,
            "efficiency": real / processed}


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{command[:3]} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def rejection_seconds(env: dict, work: Path) -> float:
    """Wall time of `autoevol run` on a pipeline whose training override is misspelt: it must fail on load (the
    recipe checked against the installed TRL), exit 2, before any stage runs."""
    command = [sys.executable, "-m", "autoevol_train.cli", "run", "recipes/quickstart/pipeline.yaml",
               "train.overrides.learning_rat=1e-5", "--output-dir", str(work / "rejected")]
    start = time.perf_counter()
    result = subprocess.run(command, env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 2 or "learning_rat" not in result.stderr:
        raise RuntimeError(f"expected exit 2 naming learning_rat, got {result.returncode}:\n{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from autoevol_train.tiny_model import build_tiny_model

    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "tiny", arch="llama")
        data = write_dataset(work / "dataset", args.rows)
        packed = token_efficiency(model, data, True, args.max_length, args.batch, work / "a")
        unpacked = token_efficiency(model, data, False, args.max_length, args.batch, work / "b")

        shared = {"model_name_or_path": str(model), "dataset_name": str(data), "max_length": args.max_length,
                  "per_device_train_batch_size": args.batch, "num_train_epochs": 1, "learning_rate": 1e-3,
                  "use_cpu": True, "bf16": False, "gradient_checkpointing": False, "report_to": "none",
                  "save_strategy": "no", "logging_steps": 10, "seed": 0, "dtype": "float32"}
        recipe = work / "sft.yaml"
        recipe.write_text(json.dumps({**shared, "output_dir": str(work / "ours")}))  # JSON is YAML
        ours = timed([sys.executable, str(REPO / "scripts" / "run_sft.py"), "--config", str(recipe)], env)
        flags = [f"--{key}={value}" for key, value in {**shared, "output_dir": str(work / "trl")}.items()]
        plain = timed([str(Path(sys.executable).parent / "trl"), "sft", *flags], env)
        rejected = sorted(rejection_seconds(env, work) for _ in range(3))[1]

    rows = [("token efficiency: ours (bfd packing, padding-free)", f"{packed['efficiency']:.3f}",
             f"{packed['steps_per_epoch']} steps/epoch, {packed['processed_tokens']} tokens processed"),
            ("token efficiency: TRL unpacked (padded batches)", f"{unpacked['efficiency']:.3f}",
             f"{unpacked['steps_per_epoch']} steps/epoch, {unpacked['processed_tokens']} tokens processed"),
            ("wall time: scripts/run_sft.py (ours)", f"{ours:.1f} s", "1 epoch, subprocess incl. start-up + save"),
            ("wall time: plain `trl sft`", f"{plain:.1f} s", "same model, data, steps, batch, lr"),
            ("misspelt train.overrides key rejected", f"{rejected:.1f} s",
             "`autoevol run`, exit 2 on load (median of 3; target < 10 s)")]
    width = max(len(row[0]) for row in rows)
    print(f"SFT benchmark: {args.rows} GSM8K conversations, tiny Llama, max_length {args.max_length}, "
          f"batch {args.batch}, CPU")
    for name, value, note in rows:
        print(f"  {name:<{width}}  {value:>8}  {note}")
    if args.out:
        args.out.write_text(json.dumps({"rows": args.rows, "max_length": args.max_length, "batch": args.batch,
                                        "packed": packed, "unpacked": unpacked, "wall_s_ours": ours,
                                        "wall_s_trl_sft": plain, "rejection_s": rejected}, indent=2))


if __name__ == "__main__":
    main()
