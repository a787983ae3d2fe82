#!/usr/bin/env bash
# One GPU check anyone with a CUDA GPU runs as is (under 15 minutes on one GPU):
#   bash benchmarks/gpu_check.sh            # prints one Markdown row per check
# Rows: AMP / channels_last / torch.compile training steps vs fp32, batched volume inference
# vs the per-slice loop, `unetzoo train --amp` of the phantom demo end to end, and DDP through
# torchrun with NCCL on one GPU, then bf16 vs fp32 on a trained mni_dk model (bench_precision).
# Without a GPU it prints one line and exits 0 (or, on a CPU with AMX / AVX512-BF16, runs
# only the bf16 check there).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
BIN=$(dirname "$PY")

# bf16 vs fp32 on a model trained on mni_dk (benchmarks/bench_precision.py). The data build
# needs nilearn's templates: on a machine without network, point MNI_DK_ROOT at a folder
# made by `unetzoo prepare mni_dk` beforehand.
precision_check() {  # $1: device
    local root_arg=()
    [ -n "${MNI_DK_ROOT:-}" ] && root_arg=(--data-root "$MNI_DK_ROOT")
    echo
    timeout 420 "$PY" benchmarks/bench_precision.py --device "$1" --model resnet34_unet \
        --iterations 200 --train-iterations 100 "${root_arg[@]}" \
        || echo "bench_precision on $1: FAILED or over 420 s (exit $?)"
}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    # No GPU, but a CPU with AMX / AVX512-BF16: the bf16 measurement is what it can add.
    # (the flags of unetzoo.engine.backends.CPU_BF16_FLAGS; grep: no second torch import)
    if grep -qwE '^(flags|Features).*(amx_bf16|avx512_bf16|bf16)' /proc/cpuinfo 2>/dev/null; then
        echo "gpu_check: no CUDA GPU; this CPU has native bf16, running bench_precision on it"
        precision_check cpu
        exit 0
    fi
    echo "gpu_check: skipped (no CUDA GPU visible to torch)"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export UNETZOO_CACHE="$tmp/cache"
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}')"
echo
echo "| check | setting | value | note |"
echo "|---|---|---|---|"

timeout 240 "$PY" benchmarks/gpu_check.py step || echo "| train step | - | FAILED or over 240 s (exit $?) | |"
timeout 90 "$PY" benchmarks/gpu_check.py volume || echo "| volume inference | - | FAILED or over 90 s (exit $?) | |"

# `unetzoo train` of the phantom demo with --amp, end to end (train, test, report).
start=$(date +%s)
if timeout 150 "$BIN/unetzoo" train --output "$tmp/amp" --amp --device cuda --no-progress \
        >"$tmp/amp.log" 2>&1; then
    dice=$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('mean_dice', d.get('mean', {}).get('dice', '?')))" \
        "$tmp/amp/report/summary.json" 2>/dev/null || echo "?")
    echo "| demo --amp end to end | phantom, 8 epochs | $(( $(date +%s) - start )) s | test mean Dice $dice |"
else
    echo "| demo --amp end to end | phantom, 8 epochs | FAILED | $(tail -n 1 "$tmp/amp.log") |"
fi

# DDP through torchrun with NCCL, one process on one GPU.
start=$(date +%s)
if timeout 120 "$BIN/torchrun" --standalone --nproc-per-node 1 -m unetzoo train \
        --output "$tmp/ddp" --device cuda --max-epochs 1 --no-test --no-progress \
        >"$tmp/ddp.log" 2>&1; then
    backend=$(grep -o -i -m1 'nccl' "$tmp/ddp.log" || echo "nccl (not echoed)")
    echo "| DDP torchrun | 1 GPU, 1 epoch | $(( $(date +%s) - start )) s | ok, backend $backend |"
else
    echo "| DDP torchrun | 1 GPU, 1 epoch | FAILED | $(tail -n 1 "$tmp/ddp.log") |"
fi

precision_check cuda
