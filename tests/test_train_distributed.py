"""2-process `accelerate launch` on CPU with the shipped ZeRO-3 config (CPU layer: `use_cpu: true`, fp32).

Real DeepSpeed ranks over gloo, launched by `launch_training` exactly as `autoevol train` does:
parameters are partitioned across the ranks, the losses equal a 2-process DDP run's, and a run resumed from
its step-3 checkpoint reproduces the uninterrupted run's losses.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoevol_train.train.launch import launch_training
from tests.test_train import write_gsm8k_dataset, write_recipe

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


@pytest.fixture(scope="module")
def runs(shared_data, tiny_llama, tmp_path_factory):
    """Run the four trainings once: ZeRO-3 6 steps, DDP 6 steps, ZeRO-3 3 steps then resumed to 6."""
    root = tmp_path_factory.mktemp("distributed")
    data = write_gsm8k_dataset(shared_data, root / "dataset", rows=48)
    patch = pytest.MonkeyPatch()
    patch.chdir(REPO)  # the accelerate configs name ds_configs/*.json relative to the repository root
    patch.setenv("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache/autoevol-train/torch_extensions"))
    common = dict(model_name_or_path=str(tiny_llama), dataset_name=str(data), per_device_train_batch_size=4,
                  save_strategy="steps", save_steps=3, learning_rate=1e-3)

    def run(name: str, accelerate: str, max_steps: int, output: str | None = None) -> Path:
        out = root / (output or name)
        recipe = write_recipe(root / f"{name}.yaml", accelerate_config=f"recipes/accelerate_configs/{accelerate}",
                              output_dir=str(out), max_steps=max_steps, **common)
        assert launch_training(recipe, []) == 0, name
        return out

    result = {"zero3": run("zero3", "cpu_zero3.yaml", 6), "ddp": run("ddp", "cpu_ddp.yaml", 6)}
    checkpoint = run("part1", "cpu_zero3.yaml", 3, output="resumed") / "checkpoint-3" / "trainer_state.json"
    written = checkpoint.stat().st_mtime_ns
    result["resumed"] = run("part2", "cpu_zero3.yaml", 6, output="resumed")
    # Resumed, not retrained: a run from scratch would have written checkpoint-3 again.
    result["checkpoint_untouched"] = checkpoint.stat().st_mtime_ns == written
    yield result
    patch.undo()


def test_zero3_partitions_parameters_across_ranks(runs):
    from safetensors.torch import load_file

    total = sum(tensor.numel() for tensor in load_file(runs["zero3"] / "model.safetensors").values())
    shards = sorted((runs["zero3"] / "checkpoint-6" / "global_step6").glob("*zero_pp_rank_*_optim_states.pt"))
    assert len(shards) == 2
    per_rank = [sum(group.numel() for group in torch.load(path, weights_only=False, map_location="cpu")
                    ["optimizer_state_dict"]["fp32_flat_groups"]) for path in shards]
    assert all(numel < 0.6 * total for numel in per_rank), (per_rank, total)  # each rank holds ~half
    assert sum(per_rank) >= total


def test_zero3_losses_equal_ddp(runs):
    zero3, ddp = losses(runs["zero3"]), losses(runs["ddp"])
    assert sorted(zero3) == sorted(ddp) == [1, 2, 3, 4, 5, 6]
    assert zero3 == pytest.approx(ddp, abs=1e-4)
    assert zero3[6] < zero3[1]


def test_resume_from_checkpoint_reproduces_uninterrupted_losses(runs):
    assert runs["checkpoint_untouched"]
    assert losses(runs["resumed"]) == pytest.approx(losses(runs["zero3"]), abs=1e-4)
    saved = json.loads((runs["resumed"] / "trainer_state.json").read_text())
    assert saved["global_step"] == 6
