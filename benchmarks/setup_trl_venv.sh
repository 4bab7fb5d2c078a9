#!/usr/bin/env bash
# Makes the separate venv that runs TRL's PRMTrainer for benchmarks/bench_train.py.
#
#     bash benchmarks/setup_trl_venv.sh                     # -> .venvs/trl in the repository
#     FASTPRM_TRL_VENV=/some/dir bash benchmarks/setup_trl_venv.sh
#
# trl==1.13.0 is the last TRL release with PRMTrainer (trl.experimental.prm). It lives in its own venv because
# it must not see fastprm and its dependency pins must not disturb the dev venv. Idempotent: a venv that
# already imports the pinned torch and trl is left alone.
#
# torch is installed FIRST with an exact pin: torch==2.13.0 is satisfied by the CPU wheel that the project's
# build machines keep on disk, whereas letting pip resolve torch as a dependency of trl/accelerate could pull
# gigabytes of CUDA wheels. The trl install then runs under a constraint that pins the torch already installed, so pip can
# never replace it.
set -euo pipefail
export TRL_EXPERIMENTAL_SILENCE=1  # TRL warns on every trl.experimental import, the check included

TORCH_PIN="2.13.0"
TRL_PIN="1.13.0"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FASTPRM_TRL_VENV:-$REPO/.venvs/trl}"

# Same interpreter as the dev venv by default, so both benchmark children run the same CPython.
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then
        PYTHON="$("$REPO/.venv/bin/python" -c 'import sys; print(sys._base_executable)')"
    else
        PYTHON="python3"
    fi
fi

check='import torch, trl, transformers
assert torch.__version__.split("+")[0] == "'"$TORCH_PIN"'", torch.__version__
assert trl.__version__ == "'"$TRL_PIN"'", trl.__version__
from trl.experimental.prm import PRMConfig, PRMTrainer
print(f"torch {torch.__version__}, trl {trl.__version__}, transformers {transformers.__version__}")'

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c "$check" 2>/dev/null; then
    echo "TRL venv already set up at $VENV"
    exit 0
fi

echo "creating the TRL venv at $VENV with $PYTHON"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install "torch==$TORCH_PIN"

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
"$VENV/bin/python" -c 'import torch; print(f"torch=={torch.__version__}")' >"$constraints"
"$VENV/bin/python" -m pip install -c "$constraints" "trl==$TRL_PIN"

"$VENV/bin/python" -c "$check"
echo "TRL venv ready: $VENV/bin/python"
