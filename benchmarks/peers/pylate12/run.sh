#!/usr/bin/env bash
# `make parity`: export our model, score 20 pairs with PyLate 1.2.0 and colbert-ai 0.2.22 in their
# own venv, then load the folders they save back into our model. Usage: run.sh [OUT] [CHECKPOINT]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$repo/outputs/parity}"
export HF_HUB_OFFLINE=1
"$here/setup.sh"
"$repo/.venv/bin/python" "$here/reference.py" "$out" ${2:+--checkpoint "$2"}
"$here/.venv/bin/python" "$here/peer.py" "$out"
"$repo/.venv/bin/python" "$here/reimport.py" "$out"
