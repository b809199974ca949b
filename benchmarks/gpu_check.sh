#!/usr/bin/env bash
# The GPU check, for a machine with an NVIDIA GPU; needs no network. About 7 minutes.
#
#   bash benchmarks/gpu_check.sh OUT_DIR [WHEELS_DIR]
#
# 1. Installs what the machine's Python lacks (hydra-core, omegaconf, lightning, ...) from the
#    wheels in WHEELS_DIR (or $COLBERT_WHEELS), never from an index. Build that folder where
#    there is a network, for the GPU machine's Python version, e.g.
#      pip download -d wheels --no-deps hydra-core==1.3.2 omegaconf==2.3.0 \
#          antlr4-python3-runtime==4.9.3 pylate==1.6.0 sentence-transformers==5.3.0
#    (add lightning, torchmetrics, transformers, bm25s, pytest if that machine lacks them).
# 2. With CUDA: the speed-lever tests on CUDA and CPU (tests/test_speed.py: gathered MaxSim,
#    bf16 autocast, fused AdamW, length buckets, a Trainer run with every lever), then
#    benchmarks/throughput.py for BERT-base in bf16 at batch 32 and 128 on MS MARCO-like
#    document lengths (ms/step, real and padded tokens/s, MFU on real tokens), each
#    alternating with PyLate 1.6.0 (installed
#    from the wheels into a venv that reuses the machine's CUDA torch), and the Trainer end to end.
#    Without CUDA (the CPU fallback): the same tests on CPU and a small CPU throughput run (with
#    the PyLate pair when benchmarks/peers/pylate16/.venv exists or WHEELS_DIR can build it).
# Every JSON, the test log and the device name go into OUT_DIR.
set -uo pipefail
out="${1:?usage: bash benchmarks/gpu_check.sh OUT_DIR [WHEELS_DIR]}"
wheels="${2:-${COLBERT_WHEELS:-}}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/gpu_check.log"
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python="$repo/.venv/bin/python"
else
    python="python3"
fi
export PYTHONPATH="$repo/src:$repo${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled
started=$SECONDS
say() { echo "[gpu_check $((SECONDS - started))s] $*" | tee -a "$log"; }

pip_from_wheels() {  # pip_from_wheels PYTHON PACKAGE...
    local interpreter="$1"
    shift
    if [[ -z "$wheels" ]]; then
        say "missing $*, and no WHEELS_DIR to install from (this script never uses the network)"
        return 1
    fi
    "$interpreter" -m pip install --quiet --no-index --find-links "$wheels" "$@" >>"$log" 2>&1
}

# module:package pairs our side imports
for pair in torch:torch lightning:lightning transformers:transformers hydra:hydra-core \
    omegaconf:omegaconf torchmetrics:torchmetrics bm25s:bm25s pytest:pytest; do
    module="${pair%%:*}"
    package="${pair#*:}"
    if ! "$python" -c "import $module" 2>/dev/null; then
        say "installing $package from $wheels"
        pip_from_wheels "$python" "$package" || exit 1
    fi
done
"$python" -c "import colbert_lightning.training.run" || { say "colbert_lightning does not import"; exit 1; }

cuda="$("$python" -c 'import torch; print(int(torch.cuda.is_available()))')"
"$python" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() \
else 'no CUDA device'); print('torch', torch.__version__)" | tee "$out/device.txt" | tee -a "$log"
command -v nvidia-smi >/dev/null && nvidia-smi >>"$out/device.txt" 2>&1

# The PyLate peer: its own venv (with the machine's torch on GPU machines).
peer_args=()
if [[ "$cuda" == 1 ]]; then
    peer_venv="$repo/benchmarks/peers/pylate16/.venv-gpu"
    if [[ ! -x "$peer_venv/bin/python" ]]; then
        "$python" -m venv --system-site-packages "$peer_venv"
    fi
    if ! "$peer_venv/bin/python" -c "import pylate.models, pylate.losses" 2>/dev/null; then
        say "installing PyLate 1.6.0 and sentence-transformers 5.3.0 from $wheels (--no-deps)"
        pip_from_wheels "$peer_venv/bin/python" --no-deps pylate==1.6.0 sentence-transformers==5.3.0
    fi
    if "$peer_venv/bin/python" -c "import pylate.models, pylate.losses" >>"$log" 2>&1; then
        export COLBERT_PEER_PYTHON="$peer_venv/bin/python"
    else
        say "PyLate does not import in $peer_venv: throughput runs without the PyLate pair"
        peer_args=(--no-peer)
    fi
else
    if [[ ! -f "$repo/benchmarks/peers/pylate16/.venv/.installed" && -n "$wheels" ]]; then
        bash "$repo/benchmarks/peers/pylate16/setup.sh" "$wheels" >>"$log" 2>&1
    fi
    if [[ ! -f "$repo/benchmarks/peers/pylate16/.venv/.installed" ]]; then
        say "no PyLate venv (bash benchmarks/peers/pylate16/setup.sh): CPU run without the pair"
        peer_args=(--no-peer)
    fi
fi

status=0
say "speed-lever tests (tests/test_speed.py)"
timeout 150 "$python" -m pytest tests/test_speed.py -q -p no:cacheprovider \
    --junitxml="$out/test_speed.xml" 2>&1 | tee -a "$log" | tail -n 3
[[ "${PIPESTATUS[0]}" == 0 ]] || status=1

if [[ "$cuda" == 1 ]]; then
    for batch in 32 128; do
        say "throughput: BERT-base, bf16, batch $batch, MS MARCO-like lengths, alternating with PyLate"
        timeout 200 "$python" benchmarks/throughput.py --device cuda --model bert_base \
            --batch-size "$batch" --threads 4 --batches 8 --warmup 5 --steps 10 --pairs 5 \
            --lengths msmarco --variants bf16 bf16_fused_gathered bf16_all --profile-steps 3 \
            --e2e plain bf16 --e2e-steps 30 --e2e-warmup 5 --workers 4 \
            "${peer_args[@]}" --out "$out" --name "throughput_cuda_b$batch" 2>&1 | tee -a "$log"
        [[ "${PIPESTATUS[0]}" == 0 ]] || status=1
    done
else
    say "no CUDA device: CPU fallback (tiny model, few steps)"
    timeout 300 "$python" benchmarks/throughput.py --device cpu --model tiny --batch-size 32 \
        --batches 2 --warmup 1 --steps 2 --pairs 2 --lengths msmarco --variants fp32 bf16_all \
        --profile-steps 0 --e2e default --e2e-steps 3 --e2e-warmup 1 \
        "${peer_args[@]}" --out "$out" --name throughput_cpu_fallback 2>&1 | tee -a "$log"
    [[ "${PIPESTATUS[0]}" == 0 ]] || status=1
fi
say "done (status $status); results in $out"
exit "$status"
