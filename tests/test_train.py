"""SFT (autoevol_train.train): recipes against the pinned TRL, training templates, real single-process runs.

Everything runs the real TRL SFTTrainer on tiny random models (conftest fixtures); the data are real GSM8K
problems from ../shared/data written in the evolve stage's dataset layout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from autoevol_train.config import InputError
from autoevol_train.train.sft import (SHIPPED_TEMPLATES, TEMPLATES_DIR, VARLEN_ATTENTION, parse_recipe,
                                      resolve_packing, train)

REPO = Path(__file__).resolve().parents[1]
GPU_RECIPES = {  # the paper's App. F.3: (effective batch on 8 GPUs, epochs, learning rate)
    "mistral-7b/chat": (128, 4, 5e-6), "mistral-7b/math": (128, 4, 5e-6),
    "mixtral-8x7b/chat": (200, 4, 5e-6), "mixtral-8x7b/math": (200, 4, 5e-6),
    "codellama-13b-python/code": (192, 3, 2e-5), "deepseek-coder-33b-base/code": (192, 3, 2e-5),
}
CONVERSATION = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "It is 5."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "The answer is: 8"},
]
# What each template puts between the prompt and the answer inside {% generation %} (trained with it).
ANSWER_PREFIX = {"mistral": " ", "codellama": " ", "deepseek-coder": "", "vicuna": " "}


def write_gsm8k_dataset(shared_data: Path, directory: Path, rows: int = 64, columns: str = "messages") -> Path:
    """GSM8K problems as an evolved dataset directory (data/train-*.parquet), short answers so the tiny model
    can learn where an answer ends."""
    from autoevol_train.data.writers import ParquetShardWriter

    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:rows]
    if columns == "messages":
        writer = ParquetShardWriter(directory, "train")
        for number, line in enumerate(lines):
            item = json.loads(line)
            answer = item["answer"].rsplit("####", 1)[1].strip()
            writer.write({"id": str(number), "messages": [
                {"role": "user", "content": item["question"]},
                {"role": "assistant", "content": f"The answer is: {answer}"}]})
        writer.close()
    else:  # the raw GSM8K columns: no 'messages'
        import datasets
        (directory / "data").mkdir(parents=True)
        datasets.Dataset.from_list([json.loads(line) for line in lines]).to_parquet(
            directory / "data" / "train-00000-of-00001.parquet")
    return directory


def write_recipe(path: Path, **keys) -> Path:
    base = {"dtype": "float32", "use_cpu": True, "bf16": False, "max_length": 256, "learning_rate": 3e-3,
            "lr_scheduler_type": "constant", "per_device_train_batch_size": 8, "gradient_checkpointing": False,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "seed": 0}
    path.write_text(yaml.safe_dump({**base, **keys}))
    return path


@pytest.fixture(scope="module")
def gsm8k_dir(shared_data, tmp_path_factory) -> Path:
    return write_gsm8k_dataset(shared_data, tmp_path_factory.mktemp("gsm8k") / "dataset")


@pytest.mark.parametrize("recipe", sorted(REPO.glob("recipes/**/sft*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_validates_against_pinned_trl(recipe):
    from transformers.integrations import HfDeepSpeedConfig

    keys = yaml.safe_load(recipe.read_text())
    gpu = "quickstart" not in recipe.parts
    # GPU recipes ask for bf16, which TrainingArguments refuses on this CPU machine: the CPU layer is added on
    # the command line here, never in the recipe.
    script_args, training_args, model_args, _ = parse_recipe(recipe, ["--use_cpu", "true"] if gpu else [])
    assert training_args.max_length == 2048 or not gpu
    accelerate = yaml.safe_load((REPO / script_args.accelerate_config).read_text())
    ds_file = accelerate.get("deepspeed_config", {}).get("deepspeed_config_file")
    if ds_file:
        ds = json.loads((REPO / ds_file).read_text())
        HfDeepSpeedConfig(ds)  # DeepSpeed's own schema
        assert ds["bf16"]["enabled"] == "auto" and ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    if gpu:  # the CPU layer never leaks into GPU recipes
        assert "use_cpu" not in keys and keys["bf16"] is True
        assert "cpu" not in Path(script_args.accelerate_config).name
        assert accelerate.get("mixed_precision", "bf16") == "bf16"
    name = "/".join(recipe.parts[-3:-1])
    if recipe.name == "sft.yaml" and name in GPU_RECIPES:
        batch, epochs, lr = GPU_RECIPES[name]
        assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * 8 == batch
        assert (training_args.num_train_epochs, training_args.learning_rate) == (epochs, lr)
        assert training_args.assistant_only_loss and accelerate["distributed_type"] == "DEEPSPEED"


@pytest.mark.parametrize("template", SHIPPED_TEMPLATES)
def test_template_labels_exactly_the_assistant_text_and_eos(template, tiny_llama, tmp_path):
    """Through SFTTrainer's own tokenization and collator: the unmasked labels are the answers + EOS, nothing else."""
    import datasets
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = (TEMPLATES_DIR / f"{template}.jinja").read_text()
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, assistant_only_loss=True, packing=False,
                     max_length=512, report_to="none")
    trainer = SFTTrainer(model=str(tiny_llama), args=args, processing_class=tokenizer,
                         train_dataset=datasets.Dataset.from_list([{"messages": CONVERSATION}]))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels = batch["labels"][0]
    trained = batch["input_ids"][0][labels != -100]
    expected = "".join(ANSWER_PREFIX[template] + m["content"] + tokenizer.eos_token
                       for m in CONVERSATION if m["role"] == "assistant")
    assert tokenizer.decode(trained) == expected
    assert (trained == tokenizer.eos_token_id).sum() == 2  # each answer's EOS is trained
    assert torch.equal(labels[labels != -100], trained)


@pytest.mark.parametrize("arch", ["mistral", "llama"])
def test_single_process_sft_learns_and_stops_with_eos(arch, request, gsm8k_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    model_dir = request.getfixturevalue(f"tiny_{arch}")
    out = tmp_path / "model"
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(model_dir), dataset_name=str(gsm8k_dir),
                          output_dir=str(out), max_steps=40)
    train(*parse_recipe(recipe))

    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last <= 0.8 * first, losses

    tokenizer = AutoTokenizer.from_pretrained(out)
    expected_template = (TEMPLATES_DIR / "mistral.jinja").read_text() if arch == "mistral" else None
    if expected_template:  # 'auto' picked the family's training template, and it was saved with the model
        assert tokenizer.chat_template == expected_template
    assert "{% generation %}" in (out / "chat_template.jinja").read_text()
    assert GenerationConfig.from_pretrained(out).eos_token_id == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(out)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Natalia sold clips to 48 of her friends "
                                             "in April, and then she sold half as many clips in May. How many "
                                             "clips did Natalia sell altogether in April and May?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=40, do_sample=False)[0][prompt["input_ids"].shape[1]:]
    assert generated[-1].item() == tokenizer.eos_token_id, tokenizer.decode(generated)
    assert "The answer is" in tokenizer.decode(generated)


def test_removed_key_fails_with_its_new_name(tmp_path):
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path="x", max_seq_length=2048)
    with pytest.raises(InputError, match=r"'max_seq_length' \(now max_length\)"):
        parse_recipe(recipe)


def test_missing_messages_column_fails_before_weights_load(shared_data, tiny_llama, tmp_path):
    data = write_gsm8k_dataset(shared_data, tmp_path / "raw", rows=8, columns="raw")
    model = tmp_path / "no-weights"
    shutil.copytree(tiny_llama, model, ignore=shutil.ignore_patterns("*.safetensors"))  # any weight load would fail
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(model), dataset_name=str(data),
                          output_dir=str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"no 'messages' column \(columns: \['question', 'answer'\]\)"):
        train(*parse_recipe(recipe))


def test_template_without_markers_fails_before_weights_load(gsm8k_dir, tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "no-markers"
    shutil.copytree(tiny_llama, model, ignore=shutil.ignore_patterns("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    tokenizer.save_pretrained(model)
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(model), dataset_name=str(gsm8k_dir),
                          chat_template_name="model", output_dir=str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"no \{% generation %\} markers"):
        train(*parse_recipe(recipe))


def test_packing_defaults_on_only_where_exact(tiny_llama):
    """bfd packing is padding-free; only varlen (flash) attention keeps packed examples apart. Measured here:
    with sdpa a packed row's second example sees the first one."""
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    model = AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation="sdpa")
    first, second = torch.randint(10, 900, (1, 7)), torch.randint(10, 900, (1, 5))
    alone = model(second).logits[0]
    packed = model(input_ids=torch.cat([first, second], 1),
                   position_ids=torch.cat([torch.arange(7), torch.arange(5)])[None]).logits[0, 7:]
    assert not torch.allclose(alone, packed, atol=1e-3)

    _, training_args, _, _ = parse_recipe(REPO / "recipes/quickstart/sft.yaml")
    for attn, expected in [("sdpa", False), (VARLEN_ATTENTION[0], True)]:
        args = training_args.__class__(output_dir="unused", use_cpu=True, bf16=False)
        resolve_packing(args, ModelConfig(attn_implementation=attn))
        assert args.packing is expected
    args = training_args.__class__(output_dir="unused", use_cpu=True, bf16=False, packing=True)
    with pytest.raises(InputError, match="packed examples would attend to each other"):
        resolve_packing(args, ModelConfig(attn_implementation="sdpa"))


def test_misspelt_key_names_the_closest_field(tmp_path):
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path="x", learning_rat=1e-5)
    with pytest.raises(InputError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_recipe(recipe)


def test_value_of_the_wrong_type_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path="x", learning_rate="fast")
    with pytest.raises(InputError, match=r"sft.yaml: argument --learning_rate.*invalid float value: 'fast'$"):
        parse_recipe(recipe)


@pytest.mark.parametrize("command", [
    ["scripts/run_sft.py", "--help"],
    ["-m", "autoevol_train.cli", "train", "recipes/mistral-7b/math/sft.yaml", "--help"],
], ids=["run_sft.py", "autoevol-train"])
def test_help_lists_the_recipe_fields(command):
    """argparse %-formats help strings: a Jinja tag in one used to crash --help."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("usage:") == 1  # printed once, not once per launched rank
    for field_name in ("--model_name_or_path", "--learning_rate", "--assistant_only_loss", "--chat_template_name",
                       "--accelerate_config", "--datasets"):
        assert field_name in result.stdout


def test_qwen_recipe_swaps_only_the_base_model_and_trls_template_masks_the_assistant_turns(gsm8k_dir, tiny_llama,
                                                                                         tmp_path):
    """A current family beyond the paper's: the Qwen2.5 recipe is the Mistral one with another base model (and
    'auto' instead of the paper's Vicuna format); 'auto' then takes TRL's own Qwen2.5 training template."""
    import trl
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_training_chat_template

    from autoevol_train.train.sft import load_train_dataset, prepare_tokenizer

    qwen_path = REPO / "recipes/qwen2.5-7b/math/sft.yaml"
    qwen, mistral = (yaml.safe_load(p.read_text()) for p in (qwen_path, REPO / "recipes/mistral-7b/math/sft.yaml"))
    assert {k for k in qwen.keys() | mistral.keys() if qwen.get(k) != mistral.get(k)} == {
        "model_name_or_path", "chat_template_name", "output_dir"}
    assert qwen["chat_template_name"] == "auto"
    parse_recipe(qwen_path, ["--use_cpu", "true"])

    # No hub here: the tiny model gets Qwen2.5's own tokenizer shape (its chat template as TRL stores it, which TRL
    # recognises by exact comparison, and its <|im_start|> / <|im_end|> tokens, EOS = <|im_end|>).
    model = tmp_path / "qwen-shaped"
    shutil.copytree(tiny_llama, model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_special_tokens({"eos_token": "<|im_end|>", "additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = (Path(trl.__file__).parent / "chat_templates" / "qwen2_5.jinja").read_text()
    tokenizer.save_pretrained(model)
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(model), dataset_name=str(gsm8k_dir),
                          chat_template_name="auto", output_dir=str(tmp_path / "out"))
    script_args, training_args, model_args, mixture = parse_recipe(recipe)
    trained = prepare_tokenizer(script_args, training_args, model_args, load_train_dataset(script_args, mixture))
    assert trained.chat_template == qwen2_5_training_chat_template

    rendered = trained.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    masked = [token for token, mask in zip(rendered["input_ids"], rendered["assistant_masks"]) if mask]
    expected = "".join("\n" + m["content"] + "<|im_end|>\n" for m in CONVERSATION if m["role"] == "assistant")
    assert trained.decode(masked) == expected  # the answers and their end-of-turn token, nothing else


def test_unknown_template_names_the_documented_way_to_supply_one(gsm8k_dir, tiny_llama, tmp_path):
    from transformers import AutoTokenizer

    model = tmp_path / "unknown-family"
    shutil.copytree(tiny_llama, model, ignore=shutil.ignore_patterns("*.safetensors"))
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(model)
    recipe = write_recipe(tmp_path / "sft.yaml", model_name_or_path=str(model), dataset_name=str(gsm8k_dir),
                          output_dir=str(tmp_path / "out"))
    with pytest.raises(InputError, match=r"TRL ships no training version of it.*a \.jinja file with markers "
                                         r"\(docs/training.md, 'Any other chat model'\)"):
        train(*parse_recipe(recipe))
