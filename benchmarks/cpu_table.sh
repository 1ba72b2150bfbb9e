#!/usr/bin/env bash
# The CPU throughput table of benchmarks/README.md: every mode of each model timed side by side in one
# process (interleaved with the fp32 + math-attention baseline), JSON per run in OUTDIR, then the table.
#   bash benchmarks/cpu_table.sh [OUTDIR]     (about 30 min on 2 cores; run on a quiet machine)
set -euo pipefail
OUTDIR=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUTDIR"
export OMP_WAIT_POLICY=PASSIVE  # other processes on a small machine otherwise stall torch's OpenMP threads
bench() { "$PY" benchmarks/pretrain_throughput.py "$@" 2>&1 | grep -v "^W1\|cpp_extension"; }

# CPU presets: fp32 with SDPA, with torch.compile, and the two bf16 modes (emulated on CPUs without bf16).
bench --preset deepmim_pixel_vit_micro_p4_32 --batch-size 128 --steps 6 --warmup 1 --compare \
      --modes fp32+fused,fp32+fused+compile --json "$OUTDIR/cpu_micro_fp32.json"
bench --preset deepmim_pixel_vit_micro_p4_32 --batch-size 16 --steps 3 --warmup 1 --compare \
      --modes bf16+math,bf16+fused --json "$OUTDIR/cpu_micro_bf16.json"
bench --preset deepmim_pixel_vit_tiny_p4_32 --batch-size 64 --steps 4 --warmup 1 --compare \
      --modes fp32+fused,fp32+fused+compile --json "$OUTDIR/cpu_tiny_fp32.json"
# ViT-B/16 at 224 with the CLIP teacher (the paper's main recipe; random-weight teacher of the real size).
bench --preset deepmim_clip_vit_base --random-clip-teacher --batch-size 8 --steps 3 --warmup 1 --compare \
      --modes fp32+fused,fp32+fused+compile --json "$OUTDIR/cpu_vitb_clip_fp32.json"
"$PY" benchmarks/table.py "$OUTDIR"/cpu_*.json
