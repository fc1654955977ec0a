#!/usr/bin/env bash
# GPU benchmark on a machine with a CUDA torch: replicate a JPEG class folder to N images, then run
# `histoclass bench` for each "MODEL SIZE [--compile ...]" line read from stdin. Results: $OUT_DIR/*.md|json.
#   printf 'mobilenetv2_100 224\nefficientnet_b0 224 --compile\n' | benchmarks/gpu.sh SRC_FOLDER COPIES OUT_DIR
set -euo pipefail
src=$1 copies=$2 out=$3
if [ -d .whl ]; then  # packages the device image lacks (pydantic), carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
data=/tmp/bench-data-$copies
if [ ! -d "$data" ]; then
  for class in "$src"/*/; do
    name=$(basename "$class")
    mkdir -p "$data/$name"
    for i in $(seq 1 "$copies"); do
      for f in "$class"*; do cp "$f" "$data/$name/c${i}_$(basename "$f")"; done
    done
  done
fi
echo "$(find "$data" -type f | wc -l) images in $data"
mkdir -p "$out"
while read -r model size extra; do
  [ -z "$model" ] && continue
  tag="$model-$size${extra:+-compiled}"
  python3 -m histoclass bench --data "$data" --model "$model" --image-size "$size" $extra \
    --out "/tmp/bench/$tag" >"$out/$tag.log" 2>&1 || { tail -30 "$out/$tag.log"; continue; }
  cp "/tmp/bench/$tag/bench.json" "$out/$tag.json"
  cat "/tmp/bench/$tag/bench.md"
done
