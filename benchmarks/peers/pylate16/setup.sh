#!/usr/bin/env bash
# The PyLate peer's own virtual environment: benchmarks/peers/pylate16/.venv
#
#   bash benchmarks/peers/pylate16/setup.sh            # from the package index (PyPI)
#   bash benchmarks/peers/pylate16/setup.sh WHEELS_DIR # offline, from a folder of wheels
#
# PyLate 1.6.0's full dependency set would move torch (and pulls fast-plaid, fastkmeans, ninja);
# the benchmark needs only pylate.models and pylate.losses, so PyLate goes in with --no-deps beside
# sentence-transformers 5.3.0, with torch pinned to the CPU (or local) wheel our own .venv uses.
# Idempotent: a finished environment is marked by .venv/.installed and left alone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
torch_version="${TORCH_VERSION:-2.13.0}"
if [[ -f "$venv/.installed" ]]; then
    echo "peer venv ready: $venv"
    exit 0
fi
pip_args=()
if [[ $# -ge 1 && -n "$1" ]]; then
    pip_args=(--no-index --find-links "$1")
fi
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet "${pip_args[@]}")
constraints="$venv/constraints.txt"
printf 'torch==%s\ntransformers<=5.3.0\n' "$torch_version" >"$constraints"
# torch first and pinned: a looser request pulls a multi-GB CUDA build
"${pip[@]}" "torch==$torch_version"
"${pip[@]}" -c "$constraints" "sentence-transformers==5.3.0" "transformers<=5.3.0,>=4.41"
# the modules pylate.models / pylate.losses import at run time (not fast-plaid, fastkmeans, ninja)
"${pip[@]}" -c "$constraints" datasets scipy "ujson==5.12.0"
"${pip[@]}" --no-deps "pylate==1.6.0"
"$venv/bin/python" -c "import torch, pylate.models, pylate.losses, sentence_transformers as st; \
print('peer venv: torch', torch.__version__, '| sentence-transformers', st.__version__)"
touch "$venv/.installed"
