#!/usr/bin/env bash
# Set up the environment and run the whole test suite (the README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export SLM_CACHE=${SLM_CACHE:-$HOME/.cache/slm}
# DeepSpeed compiles a small op on its first init_distributed: keep it across runs.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$SLM_CACHE/torch_extensions}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check pipeline data_prep tests bench
.venv/bin/python -m pytest -q "$@"
