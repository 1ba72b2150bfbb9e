#!/usr/bin/env bash
# The one GPU check for a lent accelerator: a CUDA smoke run of the demo recipe (auto precision,
# fused attention) and the throughput table for ViT-B at 224. Runs from the repository root with
# the machine's own torch/timm (no install): bash benchmarks/gpu_check.sh OUTDIR
set -uo pipefail
OUTDIR=${1:-/tmp/deepmim_gpu}
mkdir -p "$OUTDIR"
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"

echo "== CUDA smoke: demo recipe, 3 epochs =="
start=$(date +%s)
python3 -m deepmim pretrain --config demo train.epochs=3 train.output_dir=/tmp/demo_gpu train.progress=false \
    data.num_workers=6 2>&1 | grep -v "^  " | tail -6
echo "demo wall time: $(( $(date +%s) - start )) s"
cp /tmp/demo_gpu/metrics.jsonl "$OUTDIR/demo_gpu_metrics.jsonl" 2>/dev/null
cp /tmp/demo_gpu/loss.png "$OUTDIR/demo_gpu_loss.png" 2>/dev/null

echo "== throughput =="
for spec in "deepmim_pixel_vit_base 128" "mae_vit_base 128" "deepmim_pixel_vit_large 64"; do
    set -- $spec
    python3 benchmarks/pretrain_throughput.py --preset "$1" --batch-size "$2" --device cuda --steps 20 --warmup 5 \
        --compare --json "$OUTDIR/bench_$1.json" 2>&1 | tail -8
done
