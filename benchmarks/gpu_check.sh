#!/usr/bin/env bash
# The GPU measurement of the scale issue (#10) as one prepared run, e.g. on a leased GPU machine:
#
#   bash benchmarks/gpu_check.sh OUT_DIR        # from the repository root; OUT_DIR defaults to $OUT
#
# A2S stage 1 (CueExtractor) and stage 2 (SaliencyDetector) at 320x320 with a ResNet-50, batch 16: images/s of
# training and inference for the library (bf16, channels-last, cuDNN autotuning, device-side feature cache),
# a plain PyTorch loop with the same options, and a naive fp32 loop; then the same with torch.compile and a
# strict-fp32 naive baseline. Needs python3 with torch (CUDA), pytorch-lightning, timm, torchmetrics and
# OpenCV; the benchmark imports neither albumentations, kornia, pydensecrf nor wandb, and usod comes from
# this checkout (PYTHONPATH), so nothing has to be installed on an image that has those.
set -euo pipefail

OUT_DIR="${1:-${OUT:-runs/gpu-check}}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
(nvidia-smi -L || true) | tee "$OUT_DIR/device.txt"
COMMON=(--device cuda --image-size 320 --backbone resnet50 --batch-size 16 --steps 20
        --modules cue_extractor,saliency_detector)
"$PY" benchmarks/throughput.py "${COMMON[@]}" --json "$OUT_DIR/throughput_gpu.json" \
  2>&1 | tee "$OUT_DIR/throughput_gpu.txt"
"$PY" benchmarks/throughput.py "${COMMON[@]}" --compile --naive-tf32 off \
  --json "$OUT_DIR/throughput_gpu_compile.json" 2>&1 | tee "$OUT_DIR/throughput_gpu_compile.txt"
