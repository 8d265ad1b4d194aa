#!/usr/bin/env bash
# The GPU figures of docs/performance.md ("GPU"): golden parity of fp32 / fp16 / bf16 on the
# GPU, the bench in each precision (JSON), and calibration and training throughput.
# Usage, from the repository root on a machine with a CUDA GPU:  bash scripts/gpu_figures.sh DIR
# Each step has its own time limit and log section, so one failure does not lose the rest.
set -u
out=${1:-gpu-figures}  # the bench JSON files; the mappers made go to a temporary folder
work=$(mktemp -d)
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CSLA_PRECISION= HF_HUB_OFFLINE=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND...: run with a time limit, print its output and status
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  echo "=== $name: $*"
  timeout "$limit" "$@" 2>&1 | grep -v -e "No pretrained weights loaded" -e "/s\]" -e "s/it\]"
  echo "=== $name: exit ${PIPESTATUS[0]} after $(($(date +%s) - start)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
"$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda,
  'cuDNN', torch.backends.cudnn.version())"
for precision in fp16 bf16 fp32; do
  step "bench $precision" 240 "$py" -m csla_core bench --device cuda --precision "$precision" \
    --baseline none --repeats 3 --json "$out/bench_$precision.json"
done
step "golden parity on the GPU" 240 "$py" -m pytest -q -s -p no:cacheprovider \
  tests/test_golden_parity.py -k gpu
for precision in fp16 fp32; do
  step "calibrate $precision" 150 "$py" -m csla_core calibrate --random-weights --device cuda \
    --precision "$precision" -n 1024 -o "$work/calibrate_$precision"
done
for mixed in fp16 no; do
  step "train, mixed precision $mixed" 150 "$py" -m csla_core train --random-weights \
    --device cuda --init none --steps 200 --batch-size 32 --eval-samples 0 --save-every 0 \
    --mixed-precision "$mixed" -o "$work/train_$mixed"
done
