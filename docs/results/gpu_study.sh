#!/usr/bin/env bash
# The GPU study of issue 11 (study_fashion_mnist_gpu: ViT-Tiny-size/4 at 28px, 100 pre-training epochs, MAE vs
# DeepMIM vs random init, 3 seeds), prepared to run once, unattended, in ONE device call of at most ~9 minutes:
#   here, first:  mkdir -p data && cp -r /usr/share/datasets/fashion-mnist data/      (data/ is git-ignored)
#   device call:  bash docs/results/gpu_study.sh "$OUT"    with carry ["data/fashion-mnist"], timeout_s 590
# Uses the machine's own python3/torch/timm (PYTHONPATH=src, nothing installed). The study writes results.md and
# results.json after every arm and seed, so a run cut by the time limit still leaves the seeds it finished;
# figures and report.html come at the end. Re-running the same command on a machine that kept OUTDIR continues.
set -uo pipefail
OUTDIR=${1:-${OUT:-/tmp/deepmim_gpu_study}}
DATA=${FMNIST:-data/fashion-mnist}
LIMIT=${LIMIT_S:-540}
mkdir -p "$OUTDIR"
export PYTHONPATH=src PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
  git rev-parse HEAD 2>/dev/null || true; ls "$DATA"; } 2>&1 | tee "$OUTDIR/summary.txt"
timeout --signal=INT --kill-after=20 "$LIMIT" python3 -m deepmim study --config study_fashion_mnist_gpu \
    data.path="$DATA" output_dir="$OUTDIR/study" > "$OUTDIR/study.log" 2>&1
echo "study: rc=$? after ${SECONDS}s" | tee -a "$OUTDIR/summary.txt"
tail -n 30 "$OUTDIR/study.log" | tee -a "$OUTDIR/summary.txt"
cat "$OUTDIR/study/results.md" 2>/dev/null | head -n 40 | tee -a "$OUTDIR/summary.txt"
