#!/usr/bin/env bash
# The GPU half of the throughput benchmark, one stage per call. Timed on one H200 (gpu_h200/stages.txt): each tta
# stage takes under two minutes; `throughput` (then with the compiled run inside) did not finish its compiled half in
# a 220-s slot, so that half is now a stage of its own:
#
#   benchmarks/throughput/gpu.sh throughput          OUT_DIR DATA   # throughput.py, eager: every method
#   benchmarks/throughput/gpu.sh throughput-compile  OUT_DIR DATA   # throughput.py, compiled IPS on ResNet-18
#   benchmarks/throughput/gpu.sh tta-eager           OUT_DIR DATA   # CIFAR-10 ResNet-18 time-to-accuracy, eager
#   benchmarks/throughput/gpu.sh tta-compile         OUT_DIR DATA   # the same with torch.compile
#
# Arguments after DATA go to the stage's command (`throughput.py`, or `selfdistill train`, e.g. --set train.epochs=2).
# Run from the repository root. DATA is the CIFAR-10 ImageFolder tree, or the packed file made by
#   tar czf .data/cifar10.tar.gz -C ../shared/datasets cifar10
# which is unpacked to a temporary folder first. The package need not be installed (src/ is put on the path);
# PyTorch and torchvision must be. Results land in OUT_DIR (reports, metrics.csv, summary.json, logs).
set -euo pipefail

stage=${1:?stage: throughput | throughput-compile | tta-eager | tta-compile}
out=${2:?output folder}
data=${3:-../shared/datasets/cifar10}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$out"
[[ ${SELFDISTILL_GPU_SH_ANY_DEVICE:-0} == 1 ]] ||  # set to 1 to smoke-test the stages on a machine without CUDA
  python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script is for a GPU machine')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/gpu.txt" 2>&1 || true

unpack() {  # DATA as a folder, or a .tar.gz holding one top-level folder
  if [[ -f $data ]]; then
    local tmp
    tmp=$(mktemp -d)
    tar xzf "$data" -C "$tmp"
    data=$(find "$tmp" -mindepth 1 -maxdepth 1 -type d | head -n 1)
  fi
  [[ -d $data/train ]] || { echo "no ImageFolder tree at $data (expected $data/train/<class>/...)" >&2; exit 2; }
}

tta() {  # $1: run name, then extra --set overrides
  local name=$1
  shift
  unpack
  python3 -m selfdistill train --config "$root/configs/cifar10/resnet18_gpu_tta.yaml" \
    --set "name=$name" --set "out=$out" --set "data.root=$data" --set "data.cache_dir=${TMPDIR:-/tmp}/selfdistill-cache" "$@" \
    2>&1 | tee "$out/$name.log"
}

throughput() {  # throughput.py on CUDA at the GPU settings; $@: its stage's flags, then the caller's extra arguments
  unpack
  python3 "$here/throughput.py" --data "$data" --device cuda --amp bf16 --channels-last --batch 256 --steps 20 "$@"
}

case $stage in
  throughput)
    throughput --models resnet20 resnet56 resnet18_cifar --method-models resnet18_cifar \
      --out "$out/report_gpu.md" "${@:4}"
    ;;
  throughput-compile)
    throughput --compile --models resnet18_cifar --method-models resnet18_cifar --methods ips \
      --out "$out/report_gpu_compile.md" "${@:4}"
    ;;
  tta-eager) tta tta_eager "${@:4}" ;;
  tta-compile) tta tta_compile --set model.compile=true "${@:4}" ;;
  *) echo "unknown stage $stage (throughput | throughput-compile | tta-eager | tta-compile)" >&2; exit 2 ;;
esac
