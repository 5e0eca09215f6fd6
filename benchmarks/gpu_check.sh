#!/usr/bin/env bash
# The GPU checks of the corruptions and the robustness evaluation, in one go, from the repo root on a CUDA machine
# with the project's dependencies installed:
#   1. the device-aware tests on the GPU (TORCH_DEVICE=cuda): every corruption's properties there, and the GPU
#      against the CPU;
#   2. benchmarks/bench_corruptions_device.py: top-1 against the reference and images/s, then a whole
#      evaluate_robustness pass (teacher + student, 15 corruptions x 5 severities);
#   3. the CLI on cuda (`practise-df robustness --device cuda`), with a heatmap.
# DATA: the images of bench_corruptions.py (make them with
#   `python benchmarks/bench_corruptions_device.py --export DIR` where ../shared/data/imagenet-sample exists).
# Results go to $OUT (default runs/gpu_check); at most 8 files.
set -u
OUT=${OUT:-runs/gpu_check}
DATA=${DATA:-.devdata/imagenet160}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
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
