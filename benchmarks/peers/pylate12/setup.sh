#!/usr/bin/env bash
# Create benchmarks/peers/pylate12/.venv with PyLate 1.2.0 and colbert-ai 0.2.22 on the project's
# CPU torch. Idempotent: a finished install leaves .venv/.installed and is not redone.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
if [[ -f "$venv/.installed" ]]; then
    exit 0
fi
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet -c "$here/constraints.txt")
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and pinned (the CPU wheel); the constraints keep every later step from moving it
"${pip[@]}" torch==2.13.0
"${pip[@]}" pylate==1.2.0
"${pip[@]}" colbert-ai==0.2.22 faiss-cpu
"$venv/bin/python" -c "import torch, pylate, colbert, transformers; print('peer venv: torch', torch.__version__, 'transformers', transformers.__version__)"
touch "$venv/.installed"
