#!/usr/bin/env bash
# The GPU figures of the performance issue, in one call of the workplace's device tool (about 6 minutes
# on an H200). That machine has PyTorch, SentencePiece, sacreBLEU and safetensors but not `datasets`,
# and it reaches no network and not ../shared, so this checkout carries what it needs in .gpu/:
#
#   bash bench/gpu.sh --prepare        # here, once: the corpus and the missing wheels into .gpu/ (git-ignored)
#   run(command="bash bench/gpu.sh", carry=[".gpu"], timeout_s=600)    # on the device
#
# It prints the GPU, then bench/translate_speed.py on CUDA (fp32 and bf16 autocast, greedy and beam 5,
# random batches of 32 and 64) and bench/train_speed.py on CUDA in fp32 and bf16; each output is also
# written to $OUT. Nothing here is timed by a test.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--prepare" ]]; then
    mkdir -p .gpu/multi30k .gpu/whl
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    cp ../shared/data/multi30k/{train,validation,test}.jsonl .gpu/multi30k/
    # the device's Python is 3.12; the versions are those this project is tested with
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.9.0
    du -sh .gpu
    exit 0
fi

[[ -d .gpu/multi30k ]] || { echo "run 'bash bench/gpu.sh --prepare' here first, then carry .gpu" >&2; exit 2; }
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 bench/translate_speed.py --device cuda --data .gpu/multi30k/test.jsonl --repeats 3 --latency-runs 50 \
    --random-batches 32 64 2>&1 | tee "$OUT/translate_speed.txt"
for precision in fp32 bf16; do
    python3 bench/train_speed.py --device cuda --data .gpu/multi30k --steps 100 --precision "$precision" 2>&1 \
        | tee "$OUT/train_speed_$precision.txt"
done
