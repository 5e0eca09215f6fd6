#!/usr/bin/env bash
# The GPU checks of the corruptions and the robustness evaluation, in one go, from the repo root on a CUDA machine
# with the project's dependencies installed:
#   1. the device-aware tests on the GPU (TORCH_DEVICE=cuda): every corruption's properties there, and the GPU
#      against the CPU;
#   2. benchmarks/bench_corruptions_device.py: top-1 against the reference and images/s, then a whole
#      evaluate_robustness pass (teacher + student, 15 corruptions x 5 severities);
#   3. the CLI on cuda (`practise-df robustness --device cuda`), with a heatmap.
#   4. with CHECKS=datafree (or CHECKS=corruptions,datafree): data-free synthesis and recovery on the GPU (below).
#   5. with CHECKS=scaleout: block scoring and robustness on 1 GPU against all of them (below).
# DATA: the images of bench_corruptions.py (make them with
#   `python benchmarks/bench_corruptions_device.py --export DIR` where ../shared/data/imagenet-sample exists).
# Results go to $OUT (default runs/gpu_check); at most 8 files.
set -u
OUT=${OUT:-runs/gpu_check}
DATA=${DATA:-.devdata/imagenet160}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ "${CHECKS:-corruptions}" == *corruptions* ]]; then
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  $PY -c "import torch, timm, kornia; print('torch', torch.__version__, 'timm', timm.__version__, 'kornia',
    kornia.__version__, torch.cuda.get_device_name())"
  TORCH_DEVICE=cuda timeout 300 $PY -m pytest -q -rs -p no:cacheprovider tests/test_corruptions.py \
    tests/test_robustness.py
} 2>&1 | tee "$OUT/tests_cuda.log" | tail -20
timeout 360 $PY benchmarks/bench_corruptions_device.py --device cuda --data "$DATA" \
  --out "$OUT/corruptions_cuda.json" 2>&1 | tee "$OUT/bench.log" | tail -45
weights=$($PY -c "from practise_df.models import efficientnet_lite0_weights as w; print(w())")
start=$SECONDS
timeout 180 $PY -m practise_df.cli robustness --model timm:tf_efficientnet_lite0 \
  --weights "$weights" --data "$DATA" --device cuda --heatmap "$OUT/cli_heatmap.png" --output "$OUT/cli.json" \
  2>&1 | tail -30 | tee "$OUT/cli.log"
echo "CLI wall $((SECONDS - start)) s" | tee -a "$OUT/cli.log"
fi

# CHECKS=datafree (issue 14): synthesize 1024 tf_efficientnet_lite0 images at 224 px with 1000 steps in bf16 (the
# 'natural' preset, set-level BatchNorm statistics over micro-batches of 64 in batches of 256), record images/s,
# then recover the 25% point's student from them with MiR and KD (bench_datafree.py rows mir_gpu1024, kd_gpu1024:
# same 200 iterations x 32 images as every CPU row) next to the dropped-only row. Not run yet: no GPU was lent
# to the session that wrote it. Both logs and the results file land in $OUT.
if [[ "${CHECKS:-corruptions}" == *datafree* ]]; then
  weights=$($PY -c "from practise_df.models import efficientnet_lite0_weights as w; print(w())")
  start=$SECONDS
  timeout 1800 $PY -m practise_df.cli synth --model timm:tf_efficientnet_lite0 --weights "$weights" \
    --output-dir runs/pools/gpu1024_s0 --num-images 1024 --preset natural --synth-steps 1000 --batch-size 256 \
    --micro-batch 64 --device cuda --amp --seed 0 2>&1 | tail -12 | tee "$OUT/synth_gpu1024.log"
  echo "synthesis wall $((SECONDS - start)) s" | tee -a "$OUT/synth_gpu1024.log"
  (cd benchmarks && timeout 1200 $PY bench_datafree.py --point 25 --rows drop,mir_gpu1024,kd_gpu1024 --threads 4 \
    --out "$OUT/datafree_gpu.json") 2>&1 | tail -8 | tee "$OUT/datafree_gpu.log"
fi

# CHECKS=scaleout (issue 32): lite0 block scoring and a robustness sweep on 1 GPU against every GPU of the machine
# (one process each, accelerate launch): wall times, speed-up, and whether the scores and the numbers are the same.
# Needs ../shared/data/imagenet-sample. On a one-GPU machine it only checks that a launch of 1 works.
if [[ "${CHECKS:-corruptions}" == *scaleout* ]]; then
  gpus=$(nvidia-smi -L | wc -l)
  (cd benchmarks && timeout 1200 $PY bench_scale_out.py --device cuda --processes "$gpus" --threads 4 \
    --out "$OUT/scale_out.json") 2>&1 | tail -6 | tee "$OUT/scale_out.log"
fi
