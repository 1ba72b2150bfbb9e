#!/usr/bin/env bash
# The CPU tables of benchmarks/README.md, regenerated on the machine at hand. Every mode is timed against
# the authors' behaviour (fp32, unfused attention) in the same process, interleaved step by step, with the
# % of the matmul peak measured in that process; one JSON per run in OUTDIR, then the tables.
#   bash benchmarks/cpu_table.sh [OUTDIR]
# Run it alone on the machine (nothing else computing): about 20 min on 2 idle cores with an empty inductor
# cache (the ViT-B rows and the cold compiles of the `deepmim` modes are most of it; a warm cache saves
# ~4 min). Uses every core, with OpenMP's default wait policy as `deepmim` runs (PASSIVE slows a machine
# that is alone); set OMP_WAIT_POLICY=PASSIVE yourself on a machine shared with other jobs.
# OUTDIR defaults to benchmarks/results/<date>_cpu_<commit>; name the machine class instead of `cpu`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUTDIR=${1:-benchmarks/results/$(PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/machine.py folder cpu)}
mkdir -p "$OUTDIR"
export PYTHONPATH=${PYTHONPATH:-src}
START=$(date +%s)
quiet() { grep -v "^W1\|cpp_extension\|^WARNING:root"; }
bench() { "$PY" benchmarks/pretrain_throughput.py "$@" 2>&1 | quiet; }
{ lscpu | grep -E "Model name|^CPU\(s\)"
  echo "bf16 flags: $(grep -oE 'amx_bf16|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
} > "$OUTDIR/cpu_machine.txt" || true

# bf16 modes only where the CPU computes bf16 (AVX512-BF16 / AMX): elsewhere it is emulated ~100x slower,
# and `deepmim` (what the trainer chooses) is fp32 + SDPA (+ regional compile).
if [ "$("$PY" -c 'from deepmim.training.precision import cpu_supports_bf16; print(int(cpu_supports_bf16()))')" = 1 ]; then
    VITB_MODES=bf16+math,bf16+math+frozen,deepmim; MICRO_MODES=fp32+fused,bf16+math,bf16+fused,deepmim
    TINY_MODES=fp32+fused,bf16+math,deepmim
else
    VITB_MODES=fp32+fused,deepmim; MICRO_MODES=fp32+fused,deepmim; TINY_MODES=fp32+fused,deepmim
fi

# 1. ViT-B/16 with the CLIP teacher (the paper's main recipe; random-weight CLIP ViT-B/16 of the real size):
#    the authors' fp32 + unfused attention against bf16 autocast alone, + the teacher stored in bf16, and
#    what `deepmim pretrain` runs by default on a long run (+ regional compile of every block).
bench --preset deepmim_clip_vit_base --random-clip-teacher --batch-size 8 --steps 6 --warmup 1 --compare \
      --modes "$VITB_MODES" --json "$OUTDIR/cpu_vitb_clip.json"
# 2. The micro preset (the demo's model) and the tiny one: every mode, bf16 where the CPU has it.
bench --preset deepmim_pixel_vit_micro_p4_32 --batch-size 128 --steps 10 --warmup 2 --compare \
      --modes "$MICRO_MODES" --json "$OUTDIR/cpu_micro.json"
bench --preset deepmim_pixel_vit_tiny_p4_32 --batch-size 64 --steps 6 --warmup 1 --compare \
      --modes "$TINY_MODES" --json "$OUTDIR/cpu_tiny.json"
# 3. The demo end to end through the trainer (data, masks, logging, checkpoints), % of the peak.
DEMO_JSON="$OUTDIR/cpu_demo.json" "$PY" benchmarks/demo_throughput.py 2>&1 | quiet | grep -v "^  \|^---" | tail -3
#    The same with the choices the defaults avoid: a loader worker (then 1 torch thread on 2 cores), compile.
for variant in train.batch_size=256 data.num_workers=1 train.compile=true; do
    name=${variant#*.}
    DEMO_JSON="$OUTDIR/cpu_demo_${name/=/_}.json" "$PY" benchmarks/demo_throughput.py "$variant" 2>&1 | quiet \
        | grep -v "^  \|^---" | tail -3
done
# 4. Fine-tuning and feature extraction against pre-training, same encoder (micro and tiny).
"$PY" benchmarks/downstream_throughput.py --preset deepmim_pixel_vit_micro_p4_32 --batch-size 128 \
      --json "$OUTDIR/cpu_downstream_micro.json" 2>&1 | quiet
"$PY" benchmarks/downstream_throughput.py --preset deepmim_pixel_vit_tiny_p4_32 --batch-size 64 --rounds 4 \
      --json "$OUTDIR/cpu_downstream_tiny.json" 2>&1 | quiet
# 5. The ImageFolder JPEG pipeline, images/s per core (500x375 JPEGs), against the plain PIL + torchvision path.
"$PY" benchmarks/data_throughput.py --img-size 224 --img-size 112 --json "$OUTDIR/cpu_data.json" 2>&1 | quiet

"$PY" benchmarks/table.py "$OUTDIR"/cpu_vitb_clip.json "$OUTDIR"/cpu_micro.json "$OUTDIR"/cpu_tiny.json \
    "$OUTDIR"/cpu_demo*.json "$OUTDIR"/cpu_downstream_*.json "$OUTDIR"/cpu_data.json | tee "$OUTDIR/cpu_tables.md"
echo "cpu_table.sh took $(( ($(date +%s) - START) / 60 )) min"
