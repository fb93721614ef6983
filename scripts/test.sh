#!/usr/bin/env bash
# Set up the environment and run the whole test suite (the README's test command; .ci/run calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export SLM_CACHE=${SLM_CACHE:-$HOME/.cache/slm}
# DeepSpeed compiles a small op on its first init_distributed: keep it across runs.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$SLM_CACHE/torch_extensions}
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
.venv/bin/ruff check pipeline tests bench scripts data_prep
# The Slurm tests need a Slurm. In CI (or with SLM_TEST_SLURM=1) start the private single-node
# one unless one already answers, and stop it (by PID) when the tests end; elsewhere they skip.
if [[ ${CI:-} == true || ${SLM_TEST_SLURM:-} == 1 ]] && ! sinfo -h >/dev/null 2>&1; then
  if ./scripts/local_slurm.sh status >/dev/null 2>&1; then  # already up: use it, leave it running
    eval "$(./scripts/local_slurm.sh env)"
  else
    eval "$(./scripts/local_slurm.sh start)"
    trap './scripts/local_slurm.sh stop' EXIT
  fi
fi
.venv/bin/python -m pytest -q --durations=25 "$@"  # the 25 slowest, so the suite's budget stays visible
