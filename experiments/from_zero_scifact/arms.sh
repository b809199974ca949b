#!/usr/bin/env bash
# The four arms of experiment=from_zero_scifact at one size, sharing their common stages:
#   all               vocabulary -> MLM -> contrastive -> supervised -> evaluate (the pipeline)
#   random            vocabulary -> supervised -> evaluate          (random weights, then labels)
#   mlm               vocabulary -> MLM -> supervised -> evaluate
#   mlm_contrastive   vocabulary -> MLM -> contrastive -> evaluate  (no label at all)
# `all` runs first; each other arm starts from copies of its finished stage folders, which the
# pipeline skips (stage.json), so every arm's shared stages are the same weights. A stopped run
# goes on where it stopped when run again with the same arguments.
#   bash experiments/from_zero_scifact/arms.sh OUT [pipeline override ...]
# One size up:
#   bash experiments/from_zero_scifact/arms.sh OUT encoder_config.hidden_size=256 \
#     encoder_config.num_hidden_layers=4 encoder_config.num_attention_heads=4 \
#     encoder_config.intermediate_size=1024
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUT [pipeline override ...]" >&2
    exit 2
fi
out=$1
shift
python=${PYTHON:-.venv/bin/python}

arm() {  # arm NAME SHARED_STAGES... -- OVERRIDES...
    local name=$1
    shift
    local stages=()
    while [[ $1 != -- ]]; do
        stages+=("$1")
        shift
    done
    shift
    mkdir -p "$out/$name"
    for stage in "${stages[@]}"; do
        if [[ ! -e "$out/$name/$stage" ]]; then
            cp -r "$out/all/$stage" "$out/$name/$stage"
        fi
    done
    echo "== arm $name ($(date -u +%H:%M:%S) UTC)"
    "$python" -m colbert_lightning.pipeline experiment=from_zero_scifact \
        "hydra.run.dir=$out/$name" "$@"
}

arm all -- "$@"
arm random vocabulary -- stages.mlm.enabled=false stages.contrastive.enabled=false "$@"
arm mlm vocabulary mlm -- stages.contrastive.enabled=false "$@"
arm mlm_contrastive vocabulary mlm contrastive -- stages.supervised.enabled=false "$@"
echo "== done ($(date -u +%H:%M:%S) UTC): $out/{all,random,mlm,mlm_contrastive}/pipeline.json"
