"""Supervised fine-tuning with TRL's SFTTrainer: recipe → checked inputs → trainer → saved model.

A recipe is a TrlParser YAML (TRL's own shape: script arguments + `SFTConfig` + `ModelConfig` + an optional
`datasets:` mixture), so anything TRL documents works in it. What this module adds:

* defaults for this project (`AutoEvolSFTConfig`): max length 2048, assistant-only loss, and packing (bfd,
  padding-free: no pad tokens) whenever the attention is varlen (flash), the case where it is exact;
* training chat templates with ``{% generation %}`` markers, picked from the model family: TRL's shipped
  training template where TRL has one (Llama 3, Qwen2.5/3, Gemma, Phi-3, ...), ours (``templates/*.jinja``) for
  the paper's families TRL has none for, or any ``.jinja`` named with ``chat_template_name``; saved with the
  model so evaluation renders prompts the way training did;
* evolved dataset directories (``<dir>/data/<split>-*.parquet``, see `autoevol_train.data.writers`) as
  ``dataset_name`` or as mixture entries;
* validation before any weight is loaded: unknown or renamed recipe keys, a missing ``messages`` column and a
  template without assistant markers fail with an `InputError` that names the file and the field;
* automatic resume from the last checkpoint, ``trainer_state.json`` for the loss curve, a generation config
  whose EOS is the token the template ends assistant turns with, and ``trainer.end()``.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig, TrlParser
from trl.scripts.utils import DatasetConfig

from autoevol_train.config import InputError, read_yaml

TEMPLATES_DIR = Path(__file__).parent / "templates"
SHIPPED_TEMPLATES = ("mistral", "codellama", "deepseek-coder", "vicuna")
# Substrings of a model's name (or its config's model_type) → the shipped template of its family.
FAMILY_TEMPLATES = {"mixtral": "mistral", "mistral": "mistral", "codellama": "codellama",
                    "deepseek-coder": "deepseek-coder", "deepseek_coder": "deepseek-coder", "vicuna": "vicuna"}
# Keys that older TRL/transformers versions had and the pinned ones reject, with what replaced them.
RENAMED_KEYS = {"max_seq_length": "max_length", "torch_dtype": "dtype",
                "activation_checkpointing": "gradient_checkpointing (transformers < 5.2x)",
                "dataset_kwargs": "dataset_kwargs was removed: use the datasets: mixture",
                "evaluation_strategy": "eval_strategy", "warmup_ratio": "warmup_steps: a float < 1 is a ratio"}


@dataclass
class SFTScriptArguments(ScriptArguments):
    """TRL's script arguments plus the chat template to train with and the accelerate config to launch with."""

    chat_template_name: str = field(default="auto", metadata={
        "help": "training chat template: 'auto' (ours for the families TRL has none for: " + ", ".join(SHIPPED_TEMPLATES)
                + "; else the model's own if it has {%% generation %%} markers; else TRL's training template of its "
                "family: Llama 3, Qwen2.5/3, Gemma, Phi-3, ...), one of ours by name, 'model' (the tokenizer's own), "
                "or a path to a .jinja file with markers (any other chat model: docs/training.md)"})
    accelerate_config: str = field(default="recipes/accelerate_configs/deepspeed_zero3.yaml", metadata={
        "help": "accelerate config `autoevol train` launches with (a relative path, like the DeepSpeed file it "
                "names, is read from the working directory: run from the repository root, as the standard line)"})


@dataclass
class AutoEvolSFTConfig(SFTConfig):
    """`SFTConfig` with this project's defaults (the paper's max length; loss on the answers only; packing)."""

    max_length: int | None = 2048
    assistant_only_loss: bool = True
    packing: bool | None = field(default=None, metadata={
        "help": "None (default): pack (bfd, padding-free) exactly when the attention is varlen (flash), the only "
                "case where packed examples cannot attend to each other"})


# Attention implementations that honour padding-free sequence boundaries (cu_seqlens). With sdpa/eager a packed
# row is one causal sequence: examples would attend to the ones packed before them (measured in tests).
VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2",
                    "kernels-community/flash-attn3", "kernels-community/vllm-flash-attn3")


def resolve_packing(training_args: SFTConfig, model_args: ModelConfig) -> None:
    """Default packing to on where it is exact; refuse padding-free rows that would leak across examples."""
    varlen = model_args.attn_implementation in VARLEN_ATTENTION
    if training_args.packing is None:
        training_args.packing = varlen
    padding_free = training_args.padding_free or (
        training_args.packing and training_args.packing_strategy in {"bfd", "bfd_split"})
    if padding_free and not varlen:
        raise InputError(f"packing_strategy {training_args.packing_strategy!r} / padding_free needs a varlen "
                         f"attention ({', '.join(VARLEN_ATTENTION[:2])}); with attn_implementation="
                         f"{model_args.attn_implementation!r} packed examples would attend to each other. Set "
                         "attn_implementation: flash_attention_2 or packing: false")


DATACLASSES = (SFTScriptArguments, AutoEvolSFTConfig, ModelConfig, DatasetMixtureConfig)


class RecipeParser(TrlParser):
    """TrlParser whose argument errors (a value of the wrong type) are one-line `InputError`s, not a usage dump."""

    def error(self, message: str):
        raise InputError(message)


def make_parser() -> TrlParser:
    return RecipeParser(DATACLASSES)


def read_recipe(config_path: Path) -> dict:
    """The recipe's YAML mapping (not yet checked)."""
    return read_yaml(config_path, "recipe")


def unknown_keys(keys: dict) -> str | None:
    """What is wrong with a recipe's keys, or None: every key must be a field of the installed TRL's dataclasses
    (a misspelt key names its closest field, a removed one its replacement)."""
    known = {f.name for cls in DATACLASSES for f in dataclasses.fields(cls)} | {"env"}
    unknown = sorted(set(keys) - known)
    if not unknown:
        return None
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"'{key}' (now {RENAMED_KEYS[key]})" if key in RENAMED_KEYS
                     else f"'{key}' (did you mean '{close[0]}'?)" if close else f"'{key}'")
    return (f"unknown key(s) {', '.join(hints)}: not a field of TRL's SFTConfig, ModelConfig or the script "
            "arguments in the installed TRL")


def check_recipe_keys(config_path: Path) -> dict:
    """The recipe's YAML mapping, after checking every key is a field of the pinned TRL's dataclasses."""
    recipe = read_recipe(config_path)
    problem = unknown_keys(recipe)
    if problem:
        raise InputError(f"{config_path}: {problem}")
    return recipe


def _parse(config_path: Path, extra_args: list[str], source: str) -> tuple:
    try:
        return make_parser().parse_args_and_config(args=["--config", str(config_path), *extra_args])
    except (ValueError, TypeError) as exc:  # InputError too: argparse's message, prefixed with the source
        raise InputError(f"{source}: {exc}") from None


def parse_recipe(config_path: Path, extra_args: list[str] = ()) -> tuple:
    """(script_args, training_args, model_args, mixture) exactly as the entry point sees them."""
    check_recipe_keys(config_path)
    return _parse(config_path, list(extra_args), str(config_path))


def parse_recipe_mapping(recipe: dict, source: str, extra_args: list[str] = ()) -> tuple:
    """`parse_recipe` for a recipe held in memory (e.g. a pipeline's recipe plus its overrides): the same
    TrlParser path as the entry point, through a temporary file, without loading any model."""
    problem = unknown_keys(recipe)
    if problem:
        raise InputError(f"{source}: {problem}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
        return _parse(path, list(extra_args), source)


def _local_dataset(path: str, split: str) -> DatasetConfig | None:
    """An evolved dataset directory as a parquet-builder entry (its cache key covers the files)."""
    data_dir = Path(path) / "data"
    if not data_dir.is_dir():
        return None
    files = sorted(data_dir.glob(f"{split}-*.parquet"))
    if not files:
        raise InputError(f"{path}: no {split}-*.parquet files in {data_dir} (is it an evolved dataset directory?)")
    return DatasetConfig(path="parquet", data_files=[str(f) for f in files], split="train")


def load_train_dataset(script_args: SFTScriptArguments, mixture: DatasetMixtureConfig):
    """The training `DatasetDict`: `dataset_name` (hub name or evolved dataset dir) or the weighted mixture."""
    from trl import get_dataset

    if mixture.datasets:
        entries = [dataclasses.replace(_local_dataset(entry.path, entry.split) or entry, columns=entry.columns,
                                       fraction=entry.fraction) for entry in mixture.datasets]
        return get_dataset(dataclasses.replace(mixture, datasets=entries))
    if not script_args.dataset_name:
        raise InputError("the recipe names no data: set dataset_name (hub dataset or evolved dataset dir) or datasets")
    local = _local_dataset(script_args.dataset_name, script_args.dataset_train_split)
    if local is not None:
        import datasets
        train = datasets.load_dataset("parquet", data_files=local.data_files, split="train")
        return datasets.DatasetDict({script_args.dataset_train_split: train})
    import datasets
    return datasets.load_dataset(script_args.dataset_name, name=script_args.dataset_config,
                                 streaming=script_args.dataset_streaming)


def template_for(chat_template_name: str, model_name_or_path: str) -> str | None:
    """The training template's text, or None for the tokenizer's own ('model', or 'auto' with no family)."""
    if chat_template_name == "model":
        return None
    if chat_template_name in SHIPPED_TEMPLATES:
        return (TEMPLATES_DIR / f"{chat_template_name}.jinja").read_text(encoding="utf-8")
    if chat_template_name.endswith((".jinja", ".j2")):
        return Path(chat_template_name).read_text(encoding="utf-8")
    if chat_template_name != "auto":
        raise InputError(f"chat_template_name: {chat_template_name!r} is not 'auto', 'model', a .jinja path or one of "
                         f"{', '.join(SHIPPED_TEMPLATES)}")
    name = model_name_or_path.lower()
    config_path = Path(model_name_or_path) / "config.json"
    if config_path.exists():  # a local model: its architecture names the family too
        import json
        name += " " + json.loads(config_path.read_text()).get("model_type", "")
    for key, template in FAMILY_TEMPLATES.items():
        if key in name:
            return (TEMPLATES_DIR / f"{template}.jinja").read_text(encoding="utf-8")
    return None


def trl_training_template(tokenizer) -> str | None:
    """TRL's shipped training template (with generation markers) for the tokenizer's own template, which TRL
    recognises by exact comparison with the families it knows; None when the own template needs no patch or TRL
    has no training version of it."""
    from trl.chat_template_utils import get_training_chat_template

    if not tokenizer.chat_template:
        return None
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # a template TRL does not know
        return None


def prepare_tokenizer(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig, dataset):
    """Load the tokenizer only, install the training template and check the data against it.

    Everything that can be wrong with a recipe's inputs fails here, before the trainer loads any weight.
    """
    from transformers import AutoTokenizer
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    model = model_args.model_name_or_path
    if not model:
        raise InputError("the recipe has no model_name_or_path")
    template = template_for(script_args.chat_template_name, model)
    tokenizer = AutoTokenizer.from_pretrained(model, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    if template is None and script_args.chat_template_name == "auto":
        template = trl_training_template(tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None:  # padded (unpacked) batches need one; EOS is masked out of labels by TRL
        tokenizer.pad_token = tokenizer.eos_token

    split = dataset[script_args.dataset_train_split]
    columns = split.column_names
    if "messages" not in columns and "text" not in columns and not {"prompt", "completion"} <= set(columns):
        raise InputError(f"dataset {script_args.dataset_name or '(mixture)'} split '{script_args.dataset_train_split}': "
                         f"no 'messages' column (columns: {columns}); SFT reads conversations from 'messages' "
                         "(or TRL's 'text' / 'prompt'+'completion' formats)")
    if training_args.assistant_only_loss:
        if "messages" not in columns:
            raise InputError(f"dataset {script_args.dataset_name or '(mixture)'}: assistant_only_loss needs a "
                             f"'messages' column (columns: {columns}); set assistant_only_loss: false to train on "
                             "whole texts")
        if not tokenizer.chat_template or not has_generation_markers(tokenizer.chat_template):
            raise InputError(f"model {model}: its chat template has no {{% generation %}} markers and TRL ships no "
                             "training version of it, so assistant-only loss cannot find the answers; set "
                             "chat_template_name to a .jinja file with markers (docs/training.md, 'Any other chat "
                             f"model'), to one of {', '.join(SHIPPED_TEMPLATES)}, or assistant_only_loss: false")
        if not is_chat_template_stop_token_trained(tokenizer):
            raise InputError(f"model {model}: the chat template leaves the end-of-turn token outside "
                             "{% generation %}: the model would never learn to stop")
        first = split[0]["messages"]
        rendered = tokenizer.apply_chat_template(first, tokenize=True, return_dict=True,
                                                 return_assistant_tokens_mask=True)
        if not any(rendered["assistant_masks"]):
            raise InputError(f"dataset {script_args.dataset_name or '(mixture)'} row 0: no assistant tokens after "
                             f"rendering with the chat template (roles: {[m['role'] for m in first]})")
    return tokenizer


def last_checkpoint(output_dir: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def train(script_args: SFTScriptArguments, training_args: SFTConfig, model_args: ModelConfig,
          mixture: DatasetMixtureConfig) -> Path:
    """Run SFT as the recipe says; returns the output dir (model, tokenizer, template, trainer_state.json)."""
    from transformers import GenerationConfig
    from trl import SFTTrainer, get_peft_config, get_quantization_config

    resolve_packing(training_args, model_args)
    dataset = load_train_dataset(script_args, mixture)
    tokenizer = prepare_tokenizer(script_args, training_args, model_args, dataset)

    model_init_kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code,
                         "attn_implementation": model_args.attn_implementation, "dtype": model_args.dtype}
    training_args.model_init_kwargs = {**model_init_kwargs, **(training_args.model_init_kwargs or {})}
    quantization = get_quantization_config(model_args)
    if quantization is not None:  # QLoRA: each process holds the quantized model on its own device
        from trl import get_kbit_device_map
        training_args.model_init_kwargs.update(quantization_config=quantization, device_map=get_kbit_device_map())

    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    resume = training_args.resume_from_checkpoint or last_checkpoint(training_args.output_dir)
    if resume:
        trainer.accelerator.print(f"resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)

    trainer.save_model(training_args.output_dir)  # ZeRO-3: gathers the 16-bit weights; also saves the tokenizer
    trainer.save_state()  # trainer_state.json: the loss curve for the report
    if trainer.accelerator.is_main_process:
        # The template ends every assistant turn with the tokenizer's EOS: generation must stop on exactly it.
        generation = trainer.model.generation_config if trainer.model.generation_config is not None \
            else GenerationConfig()
        generation.eos_token_id = tokenizer.eos_token_id
        generation.pad_token_id = tokenizer.pad_token_id
        generation.bos_token_id = tokenizer.bos_token_id
        generation.save_pretrained(training_args.output_dir)
        tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.wait_for_everyone()
    if training_args.push_to_hub:  # TRL's push (all ranks: ZeRO-3 gathers), now that template and generation
        trainer.push_to_hub(commit_message="End of training")  # config are final; token: HF_TOKEN
    trainer.accelerator.print(f"model saved to {training_args.output_dir}")
    trainer.end()
    return Path(training_args.output_dir)


def main(argv: list[str] | None = None) -> int:
    """Entry point (`scripts/run_sft.py`, ``python -m autoevol_train.train.sft``): `--config RECIPE [--key value]`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if "--config" in argv:
            check_recipe_keys(Path(argv[argv.index("--config") + 1]))
        train(*make_parser().parse_args_and_config(args=argv))
    except InputError as exc:
        print(f"run_sft: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
