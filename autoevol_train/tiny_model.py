"""Build a tiny random Llama or Mistral model with a locally trained tokenizer, fully offline.

It is what the CPU quickstart and the test-suite run every stage on: ~1 MB, built in seconds, loaded by the
real code paths (`from_pretrained`, vLLM, TRL). Its text is meaningless; the point is that every call,
parse, filter, training step and score is real. The tokenizer is a byte-level BPE trained on the Python
standard library's own sources, which every machine has.

    python -m autoevol_train.tiny_model OUT_DIR [--arch llama|mistral]
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from pathlib import Path

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]

# A minimal chat format with TRL's {% generation %} markers, so assistant-only loss works on the tiny model.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>\n{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}\n"
    "{% else %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_STDLIB_FILES = (
    "textwrap.py", "argparse.py", "difflib.py", "fractions.py", "statistics.py", "calendar.py",
    "heapq.py", "bisect.py", "string.py", "random.py", "shlex.py", "csv.py",
)


def _corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [(stdlib / name).read_text(encoding="utf-8") for name in _STDLIB_FILES if (stdlib / name).exists()]
    if not texts:
        raise RuntimeError(f"no training text for the tiny tokenizer found under {stdlib}")
    return texts


def build_tiny_model(out_dir: str | Path, arch: str = "llama", vocab_size: int = 1024, hidden_size: int = 128,
                     num_layers: int = 2, max_position_embeddings: int = 2048, seed: int = 0) -> Path:
    """Write tokenizer + random weights + generation config into `out_dir` (skipped if already built)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, PreTrainedTokenizerFast)

    out = Path(out_dir)
    marker = out / "tiny_model.json"
    spec = {"arch": arch, "vocab_size": vocab_size, "hidden_size": hidden_size, "num_layers": num_layers,
            "max_position_embeddings": max_position_embeddings, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return out
    out.mkdir(parents=True, exist_ok=True)

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", model_max_length=max_position_embeddings)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1,  # head_dim 64: vLLM CPU attention needs >= 32
        max_position_embeddings=max_position_embeddings, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "mistral":
        model = MistralForCausalLM(MistralConfig(sliding_window=None, **common))
    else:
        raise ValueError(f"unknown tiny-model arch {arch!r}: expected 'llama' or 'mistral'")
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    marker.write_text(json.dumps(spec))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--arch", choices=["llama", "mistral"], default="llama")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, arch=args.arch))


if __name__ == "__main__":
    main()
