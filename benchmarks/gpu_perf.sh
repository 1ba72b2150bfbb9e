#!/usr/bin/env bash
# The GPU throughput check, prepared to run unattended in ONE call of at most 8 minutes:
#   bash benchmarks/gpu_perf.sh OUTDIR        (device call: bash benchmarks/gpu_perf.sh "$OUT", timeout_s 500;
#                                              the sections stop by 465 s, BUDGET_S=... changes that)
# 1. ViT-B/16 DeepMIM-CLIP (random-weight CLIP ViT-B/16 teacher), batch 128: the authors' GPU recipe
#    (fp16 autocast + loss scaling, unfused attention) against deepmim's bf16 + SDPA with the teacher
#    stored in bf16, eager and with regional torch.compile, interleaved step by step in one process;
#    % of the bf16 matmul peak measured in the same process (8192^3).
# 2. ViT-L/16 DeepMIM (pixel) with FSDP2 (1-process group, fully_shard per block), batch 64, against the
#    authors' fp16 recipe unsharded; eager first, then (section 4, with the time left) regional compile.
# 3. The demo recipe through the trainer for 2 epochs (end to end, CUDA), for the log line and img/s.
# Every section has its own time limit and its own log; a failing section does not stop the others.
# Uses the machine's own python3/torch/timm (PYTHONPATH=src, nothing installed). Results: OUTDIR/*.json,
# OUTDIR/*.log, OUTDIR/summary.txt.
set -uo pipefail
OUTDIR=${1:-${OUT:-/tmp/deepmim_gpu}}
PY=${PY:-python3}
mkdir -p "$OUTDIR"
export PYTHONPATH=src PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR="$OUTDIR/.inductor-cache"
START=$(date +%s)
BUDGET=${BUDGET_S:-465}  # seconds for the whole script; each section gets at most what is left

section() {  # section NAME LIMIT_S COMMAND...
    local name=$1 limit=$2; shift 2
    local left=$(( BUDGET - ($(date +%s) - START) ))
    (( limit > left )) && limit=$left
    if (( limit < 20 )); then echo "== $name: skipped, ${left}s left ==" | tee -a "$OUTDIR/summary.txt"; return; fi
    echo "== $name (limit ${limit}s) ==" | tee -a "$OUTDIR/summary.txt"
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
    local rc=$?
    grep -E "^\[|img/s|matmul peak|speed-up|error|Error|rc=" "$OUTDIR/$name.log" | grep -v "^W1" | tail -n 14 \
        | tee -a "$OUTDIR/summary.txt"
    echo "$name: rc=$rc after $(( $(date +%s) - START ))s" | tee -a "$OUTDIR/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(),
'bf16', torch.cuda.is_bf16_supported())"
  "$PY" -c "import open_clip; print('open_clip', open_clip.__version__)" 2>/dev/null || echo "open_clip missing: timm CLIP teacher"
} 2>&1 | tee "$OUTDIR/summary.txt"

BENCH=("$PY" benchmarks/pretrain_throughput.py --device cuda --compare --baseline fp16+math)
# most important first: whatever runs out of time is the last section
section vitb_clip 200 "${BENCH[@]}" --preset deepmim_clip_vit_base --random-clip-teacher --batch-size 128 \
    --steps 12 --warmup 4 --modes bf16+fused+frozen,bf16+fused+frozen+regional --json "$OUTDIR/gpu_vitb_clip.json"
section vitl_fsdp 80 "${BENCH[@]}" --preset deepmim_pixel_vit_large --batch-size 64 --fsdp \
    --steps 10 --warmup 3 --modes bf16+fused --json "$OUTDIR/gpu_vitl_fsdp.json"
section demo_cuda 45 "$PY" -m deepmim pretrain --config demo train.epochs=2 train.output_dir="$OUTDIR/demo" \
    data.num_workers=6 train.progress=false train.plots=false train.tensorboard=false
section vitl_fsdp_compile 130 "${BENCH[@]}" --preset deepmim_pixel_vit_large --batch-size 64 --fsdp \
    --steps 8 --warmup 2 --modes bf16+fused+regional --json "$OUTDIR/gpu_vitl_fsdp_compile.json"
cp "$OUTDIR/demo/metrics.jsonl" "$OUTDIR/demo_metrics.jsonl" 2>/dev/null
rm -rf "$OUTDIR/demo" "$OUTDIR/.inductor-cache"
echo "total $(( $(date +%s) - START ))s" | tee -a "$OUTDIR/summary.txt"
"$PY" benchmarks/table.py "$OUTDIR"/gpu_*.json > "$OUTDIR/table.md" 2>&1 && cat "$OUTDIR/table.md"
exit 0
