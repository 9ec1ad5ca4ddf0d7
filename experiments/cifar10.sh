#!/usr/bin/env bash
# CIFAR-10 experiment: MoCo-v3 against MoCo-v3 + SER, with ViT-Ti/4 at 32 px, for a fixed
# budget each, then the same evaluation of every run. The variants:
#   moco          MoCo-v3 alone (baseline layout: [CLS] at the input, no SER)
#   ser_on_l3     + SER at layer 3 ([CLS] inserted after block 3), the paper's loss (ser.grad = on)
#   ser_off_l3    + SER at layer 3 as the public code runs it (ser.grad = off: no SER gradient)
#   ser_on_l11    + SER at layer 11, the last block the layout allows (the [CLS] must see at
#                 least one block), standing for "the final layer"
# Every run uses the same seed, data order, batch and schedules; only the listed keys differ.
# Each run is `ser local` (coordinator, 2 workers, 1 loader), so this is also the distributed
# system under a long job. Runs already finished are not redone (their final state is kept).
#
#   bash experiments/cifar10.sh                     # the budget of the README's table: 100 steps
#                                                   # of 128 images, ~15 min training + ~12 min
#                                                   # evaluation per run on 2 (busy) cores
#   SER_EXP_STEPS=400 bash experiments/cifar10.sh   # a longer budget (about an hour per run)
#
# Environment: SER_CIFAR_TAR (the tarball, default ../shared/data/cifar10-jpg.tar.gz),
# SER_EXP_OUT (default runs/cifar10), SER_EXP_STEPS (steps per run, default 100),
# SER_EXP_BATCH (images per step, default 128), SER_EXP_VARIANTS (names, default all four),
# SER_EXP_EVAL_TRAIN / SER_EXP_EVAL_TEST (eval subset sizes, default 5000 / 1000), SER_BIN
# (the ser executable, default build/ser), SER_EXP_TRAIN_ONLY=1 (stop after training).
# Results: $SER_EXP_OUT/results.md (a table), and every run's eval JSON, eval table, and logs.
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=${SER_CIFAR_TAR:-../shared/data/cifar10-jpg.tar.gz}
out=${SER_EXP_OUT:-runs/cifar10}
steps=${SER_EXP_STEPS:-100}
batch=${SER_EXP_BATCH:-128}
variants=${SER_EXP_VARIANTS:-"moco ser_on_l3 ser_off_l3 ser_on_l11"}
ntrain=${SER_EXP_EVAL_TRAIN:-5000}
ntest=${SER_EXP_EVAL_TEST:-1000}
ser=${SER_BIN:-./build/ser}
[ -x "$ser" ] || { bash deploy/setup-debian.sh && bash deploy/build.sh; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The data: JPEGs in class folders; the loader reads ROOT/train, the evaluation ROOT/val.
data=$out/data/cifar10
if [ ! -d "$data/train" ]; then
  [ -f "$tarball" ] || { echo "experiments/cifar10.sh: no CIFAR-10 tarball at $tarball (set SER_CIFAR_TAR)" >&2; exit 2; }
  echo "== extracting $tarball"
  mkdir -p "$out/data"
  tar xzf "$tarball" -C "$out/data"
fi
[ -e "$data/val" ] || ln -s test "$data/val"

# The schedules span exactly the run: 10 schedule epochs of steps/10 iterations, 1 of warmup.
ipe=$(( steps / 10 > 0 ? steps / 10 : 1 ))
common=(--config configs/moco_vitt4_cifar.ini --workers 2 --steps "$steps" --iters-per-epoch "$ipe"
        --set data.path="$data" --set data.kind=imagefolder --set data.global_batch="$batch"
        --set data.shards=2 --set optim.epochs=10 --set optim.warmup_epochs=1
        --set optim.lr=5e-4 --set ser.ratio=0.0625 --set run.log_every=10
        --set run.checkpoint_every=50 --set cluster.status_port=0)

variant_sets() {
  case "$1" in
    moco)       echo "--set ser.enabled=false --set model.cls_layer=12" ;;
    ser_on_l3)  echo "--set ser.enabled=true --set ser.grad=on --set model.cls_layer=3" ;;
    ser_off_l3) echo "--set ser.enabled=true --set ser.grad=off --set model.cls_layer=3" ;;
    ser_on_l11) echo "--set ser.enabled=true --set ser.grad=on --set model.cls_layer=11" ;;
    *) echo "experiments/cifar10.sh: unknown variant $1" >&2; exit 2 ;;
  esac
}

for v in $variants; do
  run=$out/$v
  mkdir -p "$run"
  if [ -f "$run/final.safetensors" ]; then
    echo "== $v: already trained ($run/final.safetensors)"
    continue
  fi
  echo "== $v: $steps steps of $batch images ($(variant_sets "$v"))"
  t0=$(date +%s)
  # shellcheck disable=SC2046
  "$ser" local "${common[@]}" $(variant_sets "$v") --set run.name="cifar10_$v" \
    --set run.out_dir="$run" --out "$run/final.safetensors" 2>&1 | tee "$run/train.log" |
    grep -E "step [0-9]+:|run summary|error|refused" || true
  [ -f "$run/final.safetensors" ] || { echo "== $v: training failed, see $run/train.log" >&2; exit 1; }
  echo $(( $(date +%s) - t0 )) > "$run/train_seconds"
done

[ "${SER_EXP_TRAIN_ONLY:-0}" = 1 ] && exit 0

# The same evaluation of every run: kNN (k = 20, T = 0.07) and the linear probe on the last 4
# [CLS], the transformation consistency and equivariance error, on fixed subsets of
# train / test (the evaluation reads the run directory's newest checkpoint).
for v in $variants; do
  run=$out/$v
  [ -f "$run/eval.json" ] && continue
  echo "== $v: evaluating"
  t0=$(date +%s)
  "$ser" eval knn,linear,equivariance --checkpoint "$run" --data "$data" \
    --train-limit "$ntrain" --test-limit "$ntest" --json "$run/eval.json.tmp" | tee "$run/eval.log"
  mv "$run/eval.json.tmp" "$run/eval.json"
  echo $(( $(date +%s) - t0 )) > "$run/eval_seconds"
done

# The baseline row: the same evaluation of the first variant's network at initialisation.
first=${variants%% *}
if [ ! -f "$out/random/eval.json" ]; then
  echo "== random init of $first: evaluating"
  mkdir -p "$out/random"
  t0=$(date +%s)
  "$ser" eval knn,linear,equivariance --checkpoint "$out/$first" --random-init --data "$data" \
    --train-limit "$ntrain" --test-limit "$ntest" --json "$out/random/eval.json.tmp" | tee "$out/random/eval.log"
  mv "$out/random/eval.json.tmp" "$out/random/eval.json"
  echo $(( $(date +%s) - t0 )) > "$out/random/eval_seconds"
fi

# The table, from each run's evaluation table (lines "mode metric value").
get() { awk -v m="$2" -v k="$3" -v f="${4:-%.2f}" '$1 == m && $2 == k { printf f, $3 }' "$1"; }
{
  echo "| variant | steps x batch | kNN top-1 | linear top-1 | consistency rot90 / hflip / scale 0.75 / 1.25 | token-map equivariance error, mean (map) | train min | eval min |"
  echo "|---|---|---|---|---|---|---|---|"
  for v in random $variants; do
    e=$out/$v/eval.log
    label=$v budget="$steps x $batch"
    [ "$v" = random ] && label="random init ($first)" budget=0
    echo "| $label | $budget | $(get "$e" knn top1) | $(get "$e" linear test_top1) |" \
         "$(get "$e" equivariance consistency.rot90 %.3f) / $(get "$e" equivariance consistency.hflip %.3f) /" \
         "$(get "$e" equivariance consistency.scale0.75 %.3f) / $(get "$e" equivariance consistency.scale1.25 %.3f) |" \
         "$(get "$e" equivariance error.mean %.3f) (block $(get "$e" equivariance map_block %.0f)) |" \
         "$(( $(cat "$out/$v/train_seconds" 2>/dev/null || echo 0) / 60 )) |" \
         "$(( $(cat "$out/$v/eval_seconds" 2>/dev/null || echo 0) / 60 )) |"
  done
} > "$out/results.md"
echo "== results ($steps steps x $batch images per run; eval on $ntrain train / $ntest test images)"
cat "$out/results.md"
