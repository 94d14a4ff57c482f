"""`autoevol train RECIPE`: the standard `accelerate launch` line, run for the user.

The recipe names its accelerate config (`accelerate_config`, default ZeRO-3); this only builds the command
that a user would type and runs it, so what `autoevol train` does is exactly what the documented line does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from autoevol_train.config import InputError, read_yaml

DEFAULT_ACCELERATE_CONFIG = "recipes/accelerate_configs/deepspeed_zero3.yaml"


def _read_recipe(config_path: Path) -> dict:
    return read_yaml(config_path, "recipe")


def training_command(config_path: Path, script_args: list[str]) -> list[str]:
    accelerate_config = _read_recipe(config_path).get("accelerate_config", DEFAULT_ACCELERATE_CONFIG)
    if not Path(accelerate_config).is_file():
        raise InputError(f"{config_path}: accelerate_config: {accelerate_config}: no such file")
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
            "-m", "autoevol_train.train.sft", "--config", str(config_path), *script_args]


def _environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    # DeepSpeed compiles its ops on first use: one cache per user, not one per run.
    cache = Path.home() / ".cache" / "autoevol-train" / "torch_extensions"
    return {"TORCH_EXTENSIONS_DIR": str(cache), **os.environ, "TOKENIZERS_PARALLELISM": "false", **(extra or {})}


def launch_training(config_path: Path, script_args: list[str], env: dict[str, str] | None = None) -> int:
    """Run the recipe under `accelerate launch` with its accelerate config; returns the exit code.
    Paths in recipes and accelerate configs are relative to the repository root, as with the standard line."""
    command = training_command(config_path, script_args)
    print("+ " + " ".join(command[2:]), file=sys.stderr, flush=True)
    return subprocess.run(command, env=_environment(env)).returncode


def run_single_process(config_path: Path, script_args: list[str], env: dict[str, str] | None = None) -> int:
    """One plain process, no launcher (the CPU quickstart's tiny model)."""
    _read_recipe(config_path)
    command = [sys.executable, "-m", "autoevol_train.train.sft", "--config", str(config_path), *script_args]
    return subprocess.run(command, env=_environment(env)).returncode
