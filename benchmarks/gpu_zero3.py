"""ZeRO-3 training throughput and MFU on one GPU: Llama-shaped models with random weights, no downloads.

For each size it runs `accelerate launch --config_file recipes/accelerate_configs/deepspeed_zero3.yaml
--num_processes 1` on this same file (worker mode): a `LlamaForCausalLM` built from a config (random weights,
no tokenizer), random token ids as a `datasets.Dataset`, the transformers Trainer under DeepSpeed ZeRO-3 with
bf16 and gradient checkpointing, `--steps` optimizer steps of which the first `--warmup` are not timed.

    tokens/s = batch x seq_len x timed steps / timed seconds
    MFU      = 6 x N x tokens/s / peak        (N: all parameters; attention FLOPs not counted; peak: 989e12,
                                               H100 SXM dense bf16; --peak-flops to change)

    python benchmarks/gpu_zero3.py --out gpu_zero3.json                 # ~1.1B (TinyLlama shape)
    python benchmarks/gpu_zero3.py --sizes 1b,7b --out gpu_zero3.json   # + Llama-2-7B shape, ZeRO-3 + CPU offload
    python benchmarks/gpu_zero3.py --tiny --out /tmp/tiny.json          # CPU smoke test of the same path

Self-contained (torch, transformers, accelerate, deepspeed, datasets only); run it from the repository root.
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
SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "tiny": (64, 128, 2, 2, 1, 1024),
    "1b": (2048, 5632, 22, 32, 4, 32000),     # TinyLlama-1.1B
    "3b": (3072, 8192, 28, 24, 8, 128256),    # Llama-3.2-3B
    "7b": (4096, 11008, 32, 32, 32, 32000),   # Llama-2-7B
}
ACCELERATE_CONFIGS = {"tiny": "deepspeed_zero3.yaml", "1b": "deepspeed_zero3.yaml", "3b": "deepspeed_zero3.yaml",
                      "7b": "deepspeed_zero3_offload.yaml"}  # 7B: fp32 master + Adam (~84 GB) exceed one GPU


def parameter_count(size: str) -> int:
    hidden, inter, layers, heads, kv_heads, vocab = SHAPES[size]
    kv_dim = hidden // heads * kv_heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter + 2 * hidden
    return 2 * vocab * hidden + layers * per_layer + hidden  # untied embeddings + lm head, final norm


def worker(args: argparse.Namespace) -> None:
    """One training run inside `accelerate launch` (DeepSpeed ZeRO-3 state comes from the launcher's env)."""
    import datasets
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

    hidden, inter, layers, heads, kv_heads, vocab = SHAPES[args.size]
    cpu = args.size == "tiny"
    training_args = TrainingArguments(  # built before the model: it turns on ZeRO-3 init (partitioned weights)
        output_dir=args.workdir, per_device_train_batch_size=args.batch, max_steps=args.steps, learning_rate=1e-5,
        bf16=not cpu, use_cpu=cpu, gradient_checkpointing=args.checkpointing, logging_steps=1, save_strategy="no",
        report_to="none", dataloader_num_workers=2 if not cpu else 0, seed=0)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=max(args.seq_len, 2048), tie_word_embeddings=False,
                         attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    rows = args.batch * args.steps
    ids = torch.randint(0, vocab, (rows, args.seq_len), generator=torch.Generator().manual_seed(0))
    dataset = datasets.Dataset.from_dict({"input_ids": ids.tolist()})

    def collate(examples: list[dict]) -> dict:
        batch = torch.tensor([example["input_ids"] for example in examples])
        return {"input_ids": batch, "labels": batch}

    class StepClock(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    clock = StepClock()
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collate,
                      callbacks=[clock])
    trainer.train()
    timed_steps = len(clock.times) - 1 - args.warmup
    seconds = clock.times[-1] - clock.times[args.warmup]
    world = trainer.accelerator.num_processes
    tokens_per_s = args.batch * args.seq_len * world * timed_steps / seconds
    n_params = parameter_count(args.size)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {"size": args.size, "params": n_params, "batch_per_gpu": args.batch, "seq_len": args.seq_len,
              "gpus": world, "timed_steps": timed_steps, "seconds": seconds, "tokens_per_s": tokens_per_s,
              "tokens_per_s_per_gpu": tokens_per_s / world,
              "mfu": 6 * n_params * tokens_per_s / world / args.peak_flops,
              "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
              "first_loss": losses[0], "last_loss": losses[-1],
              "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "accelerate_config": ACCELERATE_CONFIGS[args.size]}
    if trainer.accelerator.is_main_process:
        Path(args.result).write_text(json.dumps(result))
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1b", help="comma-separated: 1b, 3b, 7b")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on CPU (smoke test)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="sequences per GPU per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=True,
                        help="gradient checkpointing (recomputation is not counted in MFU)")
    parser.add_argument("--peak-flops", type=float, default=989e12)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    if args.tiny:
        args.steps, args.warmup, args.batch, args.seq_len = min(args.steps, 8), min(args.warmup, 2), 2, 128
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                  str(Path.home() / ".cache/autoevol-train/torch_extensions"))}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            result_path = Path(tmp) / f"{size}.json"
            command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(REPO / "recipes" / "accelerate_configs" / ACCELERATE_CONFIGS[size]),
                       "--num_processes", "1", str(Path(__file__).resolve()), "--worker", "--size", size,
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
                       "--seq-len", str(args.seq_len), "--peak-flops", str(args.peak_flops),
                       "--checkpointing" if args.checkpointing else "--no-checkpointing",
                       "--result", str(result_path), "--workdir", str(Path(tmp) / size)]
            print("+", " ".join(command[2:]), file=sys.stderr, flush=True)
            code = subprocess.run(command, cwd=REPO, env=env).returncode
            if code != 0:
                results.append({"size": size, "error": f"exit code {code}"})
                continue
            results.append(json.loads(result_path.read_text()))

    print(f"\nZeRO-3, 1 process, bf16={'no (CPU)' if args.tiny else 'yes'}, "
          f"gradient checkpointing {'on' if args.checkpointing else 'off'}, "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps ({args.warmup} untimed)")
    print(f"{'size':>5} {'params':>8} {'tokens/s':>10} {'MFU':>7} {'peak GiB':>9} {'loss':>15}  device")
    for r in results:
        if "error" in r:
            print(f"{r['size']:>5}  failed: {r['error']}")
            continue
        memory = f"{r['peak_memory_gib']:.1f}" if r["peak_memory_gib"] is not None else "-"
        print(f"{r['size']:>5} {r['params'] / 1e9:>7.2f}B {r['tokens_per_s']:>10.0f} {r['mfu']:>7.1%} {memory:>9} "
              f"{r['first_loss']:>7.3f}>{r['last_loss']:<7.3f}  {r['device']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
