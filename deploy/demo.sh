#!/usr/bin/env bash
# The main job after set-up (deploy/main.sh runs set-up, build, then this): `ser local`
# (coordinator, 2 workers, 1 data loader) pretrains MoCo-v3 + SER with the recipe of
# configs/demo_fashion.ini on Fashion-MNIST from Debian's dataset-fashion-mnist (or on the
# ImageFolder / CIFAR-10 given with --data) for its whole schedule (optim.epochs epochs of
# ceil(images / batch) steps), with the online kNN monitor on, then `ser eval knn` measures the
# trained network next to the randomly initialised one and the raw input pixels, on one split.
#
#   bash deploy/demo.sh [--data DIR] [--steps K] [--method moco|dino|barlow]
# --method picks the preset: moco (configs/demo_fashion.ini, the default), dino
# (configs/dino_fashion.ini: DINO + SER) or barlow (configs/barlow_fashion.ini:
# Barlow Twins + SER); the same network, data and schedule length.
# Environment: SER_BIN (the executable, default build/ser), SER_DEMO_STEPS (stop after K steps;
# default: the whole schedule), SER_DEMO_OUT (run folder, default a fresh
# /tmp/ser-demo.XXXXXX), SER_DEMO_EVAL_TRAIN / SER_DEMO_EVAL_TEST (kNN subset sizes, default
# 5000 / 1000).
# Exit status 77 (the test suite's "skipped") when no dataset is there.
set -euo pipefail
cd "$(dirname "$0")/.."
ser=${SER_BIN:-./build/ser}
steps=${SER_DEMO_STEPS:-}
data=/usr/share/datasets/fashion-mnist
kind=fashion_mnist
name="Fashion-MNIST"
method=moco
while [ $# -gt 0 ]; do
  case "$1" in
    --data) data=$2; kind=auto; name=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --method) method=$2; shift 2 ;;
    *) echo "usage: deploy/demo.sh [--data DIR] [--steps K] [--method moco|dino|barlow]" >&2; exit 2 ;;
  esac
done
case "$method" in
  moco) cfg=configs/demo_fashion.ini; title="MoCo-v3 + SER" ;;
  dino) cfg=configs/dino_fashion.ini; title="DINO + SER" ;;
  barlow) cfg=configs/barlow_fashion.ini; title="Barlow Twins + SER" ;;
  *) echo "deploy/demo.sh: --method must be moco, dino or barlow, not '$method'" >&2; exit 2 ;;
esac
if [ ! -e "$data" ]; then
  echo "deploy/demo.sh: no dataset at $data (install dataset-fashion-mnist, or give --data DIR)" >&2
  exit 77
fi
out=${SER_DEMO_OUT:-$(mktemp -d /tmp/ser-demo.XXXXXX)}
mkdir -p "$out"
ntrain=${SER_DEMO_EVAL_TRAIN:-5000}
ntest=${SER_DEMO_EVAL_TEST:-1000}
sets=(--set data.path="$data" --set data.kind="$kind" --set run.out_dir="$out"
      --set cluster.status_port=0)
limit=()
[ -n "$steps" ] && limit=(--steps "$steps")
echo "== ser local: $title ($cfg) on $name${steps:+, stopped after $steps steps}"
echo "   (the status URL is printed below; step logs go to $out/metrics.jsonl and TensorBoard events)"
t0=$(date +%s)
"$ser" local --config "$cfg" "${sets[@]}" --workers 2 "${limit[@]}" \
  --out "$out/final.safetensors" 2>&1 |
  grep --line-buffered -E "status on|schedule:|step [0-9]+:|run summary|checkpoint .*ckpt|error|refused |lost|stops|monitor" |
  sed -u 's/^/   /'
[ -f "$out/final.safetensors" ] || { echo "== training failed" >&2; exit 1; }
train_s=$(( $(date +%s) - t0 ))
echo "== trained in $train_s s; evaluating (kNN, k = 20, on $ntrain train / $ntest test images)"
eval_data=$data
[ "$kind" = fashion_mnist ] && eval_data="fashion-mnist:$data"
eval_args=(knn --data "$eval_data" --train-limit "$ntrain" --test-limit "$ntest")
"$ser" eval "${eval_args[@]}" --checkpoint "$out" --json "$out/knn_trained.json" 2>&1 | tee "$out/knn_trained.txt" | sed 's/^/   /'
"$ser" eval "${eval_args[@]}" --checkpoint "$out" --random-init --json "$out/knn_random.json" 2>&1 | tee "$out/knn_random.txt" | sed 's/^/   /'
"$ser" eval "${eval_args[@]}" --checkpoint "$out" --pixels --json "$out/knn_pixels.json" 2>&1 | tee "$out/knn_pixels.txt" | sed 's/^/   /'
top1() { awk -v m="${2:-top1}" '$1 == "knn" && $2 == m { print $3 }' "$1"; }
trained=$(top1 "$out/knn_trained.txt")
random=$(top1 "$out/knn_random.txt")
pixels=$(top1 "$out/knn_pixels.txt")
centred=$(top1 "$out/knn_pixels.txt" top1_centred)
[ -n "$trained" ] && [ -n "$random" ] && [ -n "$pixels" ] ||
  { echo "== evaluation failed (see $out/knn_*.txt)" >&2; exit 1; }
printf "== kNN top-1 accuracy on %s: trained %.1f%%  vs  random init %.1f%%  vs  raw pixels %.1f%% (centred %.1f%%); training %d s\n" \
  "$name" "$trained" "$random" "$pixels" "$centred" "$train_s"
echo "== done: checkpoints, logs and eval JSON in $out"
echo "   (resume: SER_DEMO_OUT=$out bash deploy/demo.sh --steps N continues from the newest checkpoint)"
