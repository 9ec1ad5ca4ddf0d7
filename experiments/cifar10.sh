#!/usr/bin/env bash
# CIFAR-10 study: MoCo-v3 against MoCo-v3 + SER with the recipe of configs/cifar10_small.ini
# (docs/recipes.md: a 64-wide, 4-block ViT with 4 px patches at 32 px, sized to learn within an
# hour on 2 cores), each run training the preset's whole schedule, then the same evaluation of
# every run. The variants:
#   moco          MoCo-v3 alone (baseline layout: [CLS] at the input, no SER)
#   ser_on_l2     + SER at block 2 of 4 ([CLS] inserted after it), the paper's loss (ser.grad = on)
#   ser_on_l3     + SER at block 3 of 4, the late layer (the [CLS] must see at least one block)
#   ser_off_l2    + SER at block 2 as the public code runs it (ser.grad = off: no SER gradient)
# The paper's comparison (SER_EXP_VARIANTS=comparison: the four above and these; MoCo-v3 in the
# baseline layout plus each invariance + equivariance add-on, and the 2+4-view runs; local views
# are 12 px at this image size):
#   essl          E-SSL: rotation prediction on 4 rotated crops (scale 0.05-0.14)
#   inv_essl      MoCo-v3 with those 4 rotated crops as extra queries (E-SSL's matched views)
#   augself       AugSelf: crop and colour difference predictors on the [CLS] pair
#   equimod       EquiMod: transformation-conditioned predictor with the centre view x_0
#   stl           STL: hypernetwork transformation predictor on aligned pairs (trans_dim 64)
#   essl_l2, augself_l2, equimod_l2, stl_l2
#                 the same add-ons layer-decoupled: they read the mean of the block-2 map after
#                 norm_equiv ([CLS] after block 2, moco.addon_layer = 2), no SER term
#   inv_local4    MoCo-v3 with 2 + 4 views (4 local crops, scale 0.05-0.25, as extra queries)
#   ser_local4    MoCo-v3 + SER at block 3 with the same 2 + 4 views (SER on the global pair)
#   erl_local4    the paper's SER 2+4 variant: ser_local4 plus 2 local SER pairs per equivariant
#                 sample, every pair student against student (ser.local_pairs = 2)
# The three base methods (SER_EXP_VARIANTS=methods: moco and ser_on_l2 above and these, each from
# its method's CIFAR-10 preset instead of configs/cifar10_small.ini):
#   dino          DINO (configs/dino_cifar10.ini: 1024 prototypes, teacher temperature 0.04, 4
#                 heads, 18 epochs), baseline layout, no SER
#   dino_ser      DINO + SER at block 2, the preset itself
#   barlow        Barlow Twins (configs/barlow_cifar10.ini: 256-wide projector), baseline layout,
#                 no SER
#   barlow_ser    Barlow Twins + SER at block 2, the preset itself
# Every run uses the same seed, data order, batch and schedules; only the listed keys differ.
# Each run is `ser local` (coordinator, 2 workers, 1 loader) with the online kNN monitor, so its
# learning curve is in RUN/metrics.jsonl; runs already finished are not redone, and a stopped
# run resumes from its newest checkpoint.
#
#   bash experiments/cifar10.sh                          # every variant, the preset's schedule
#   SER_EXP_VARIANTS="ser_on_l2" bash experiments/cifar10.sh
#   SER_EXP_VARIANTS=comparison bash experiments/cifar10.sh   # the paper's table (16 runs, ~3.5 h)
#
# Environment: SER_CIFAR_TAR (a tarball with cifar10/train and cifar10/test class folders of
# JPEGs; default data/cifar10-jpg.tar.gz), SER_EXP_OUT (default runs/cifar10),
# SER_EXP_VARIANTS (names, default all four), SER_EXP_STEPS (stop each run after K steps:
# default the whole schedule), SER_EXP_SETS (more key=value overrides for every run, e.g. a
# shorter schedule: "optim.epochs=1 optim.warmup_epochs=0 data.iters_per_epoch=150"),
# SER_EXP_SEED (data.seed, default 0), SER_EXP_EVAL_TRAIN /
# SER_EXP_EVAL_TEST (eval subset sizes, default 5000 / 1000), SER_EXP_EVAL_FULL=0 (skip kNN and
# linear on the whole split, 50000 / 10000, about a minute a run), SER_BIN (the ser executable,
# default build/ser), SER_EXP_TRAIN_ONLY=1 (stop after training).
# Results: $SER_EXP_OUT/results.md (the tables), $SER_EXP_OUT/knn_curves.png (the monitors' kNN
# curves, with gnuplot when it is installed), and every run's eval JSON, eval table and logs
# (RUN/eval.* on the subsets, RUN/eval_full.* on the whole split).
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=${SER_CIFAR_TAR:-data/cifar10-jpg.tar.gz}
out=${SER_EXP_OUT:-runs/cifar10}
steps=${SER_EXP_STEPS:-}
seed=${SER_EXP_SEED:-0}
full=${SER_EXP_EVAL_FULL:-1}
case "$full" in
  0|1) ;;
  *) echo "experiments/cifar10.sh: SER_EXP_EVAL_FULL=$full: want 0 or 1" >&2; exit 2 ;;
esac
variants=${SER_EXP_VARIANTS:-"moco ser_on_l2 ser_on_l3 ser_off_l2"}
[ "$variants" = comparison ] &&
  variants="moco ser_on_l2 ser_on_l3 ser_off_l2 essl inv_essl augself equimod stl essl_l2 augself_l2 equimod_l2 stl_l2 inv_local4 ser_local4 erl_local4"
[ "$variants" = methods ] && variants="moco ser_on_l2 dino dino_ser barlow barlow_ser"
ntrain=${SER_EXP_EVAL_TRAIN:-5000}
ntest=${SER_EXP_EVAL_TEST:-1000}
ser=${SER_BIN:-./build/ser}
SER_WITH_PLOTS=1 bash deploy/setup-debian.sh
[ -x "$ser" ] || bash deploy/build.sh
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

# The whole schedule of the preset (or --steps K of it).
common=(--workers 2 --set data.path="$data"
        --set data.kind=imagefolder --set data.seed="$seed" --set run.log_every=50
        --set cluster.status_port=0)
[ -n "$steps" ] && common+=(--steps "$steps")
for kv in ${SER_EXP_SETS:-}; do common+=(--set "$kv"); done

# The preset each variant starts from.
variant_config() {
  case "$1" in
    dino|dino_ser)     echo configs/dino_cifar10.ini ;;
    barlow|barlow_ser) echo configs/barlow_cifar10.ini ;;
    *)                 echo configs/cifar10_small.ini ;;
  esac
}
variant_sets() {
  case "$1" in
    moco|dino|barlow) echo "--set ser.enabled=false --set model.cls_layer=4" ;;
    dino_ser|barlow_ser) echo "" ;;
    ser_on_l2)  echo "--set ser.enabled=true --set ser.grad=on --set model.cls_layer=2" ;;
    ser_on_l3)  echo "--set ser.enabled=true --set ser.grad=on --set model.cls_layer=3" ;;
    ser_off_l2) echo "--set ser.enabled=true --set ser.grad=off --set model.cls_layer=2" ;;
    essl)       echo "--set method.name=essl --set ser.enabled=false --set model.cls_layer=4" \
                     "--set data.local_crops=4 --set data.local_mode=rotations" \
                     "--set data.local_crop_max=0.14" ;;
    inv_essl)   echo "--set ser.enabled=false --set model.cls_layer=4 --set data.local_crops=4" \
                     "--set data.local_mode=rotations --set data.local_crop_max=0.14" ;;
    augself)    echo "--set method.name=augself --set ser.enabled=false --set model.cls_layer=4" ;;
    equimod)    echo "--set method.name=equimod --set ser.enabled=false --set model.cls_layer=4" \
                     "--set data.local_crops=1 --set data.local_mode=center --set data.local_size=32" ;;
    stl)        echo "--set method.name=stl --set ser.enabled=false --set model.cls_layer=4" \
                     "--set stl.trans_dim=64" ;;
    essl_l2|augself_l2|equimod_l2|stl_l2)
                # the final-[CLS] variant's keys, then the SER layout with the add-on at block 2
                echo "$(variant_sets "${1%_l2}" | sed 's/model.cls_layer=4/model.cls_layer=2/')" \
                     "--set moco.addon_layer=2" ;;
    inv_local4) echo "--set ser.enabled=false --set model.cls_layer=4 --set data.local_crops=4" \
                     "--set data.local_crop_max=0.25" ;;
    ser_local4) echo "--set ser.enabled=true --set ser.grad=on --set model.cls_layer=3" \
                     "--set data.local_crops=4 --set data.local_crop_max=0.25" ;;
    erl_local4) echo "$(variant_sets ser_local4)" "--set ser.local_pairs=2" ;;
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
  echo "== $v: $(variant_config "$v")${steps:+, $steps steps} ($(variant_sets "$v"))"
  t0=$(date +%s)
  # shellcheck disable=SC2046
  "$ser" local --config "$(variant_config "$v")" "${common[@]}" $(variant_sets "$v") --set run.name="cifar10_$v" \
    --set run.out_dir="$run" --out "$run/final.safetensors" 2>&1 | tee "$run/train.log" |
    grep -E "schedule:|step [0-9]+:|run summary|error|refused" || true
  [ -f "$run/final.safetensors" ] || { echo "== $v: training failed, see $run/train.log" >&2; exit 1; }
  echo $(( $(date +%s) - t0 )) >> "$run/train_seconds"  # one line per (resumed) session
done

[ "${SER_EXP_TRAIN_ONLY:-0}" = 1 ] && exit 0

# The same evaluation of every run: kNN (k = 20, T = 0.07) and the linear probe on the last 4
# [CLS], the transformation consistency and equivariance error, and the linear classifier's
# accuracy on rotated / flipped test images (robustness without corruptions), on fixed
# subsets of train / test (the evaluation reads the run directory's newest checkpoint).
modes=(knn,linear,equivariance,robustness --corruptions none)
# evaluate DIR NAME NTRAIN NTEST ARGS...: `ser eval ARGS` on NTRAIN / NTEST images into
# DIR/NAME.json, DIR/NAME.log and DIR/NAME_seconds; done already where DIR/NAME.json exists.
evaluate() {
  local dir=$1 name=$2 ntr=$3 nte=$4 t0
  shift 4
  [ -f "$dir/$name.json" ] && return 0
  echo "== ${dir##*/}: evaluating on $ntr train / $nte test images"
  mkdir -p "$dir"
  t0=$(date +%s)
  "$ser" eval "$@" --data "$data" --train-limit "$ntr" --test-limit "$nte" \
    --json "$dir/$name.json.tmp" | tee "$dir/$name.log"
  mv "$dir/$name.json.tmp" "$dir/$name.json"
  echo $(( $(date +%s) - t0 )) > "$dir/${name}_seconds"
}
for v in $variants; do
  evaluate "$out/$v" eval "$ntrain" "$ntest" "${modes[@]}" --checkpoint "$out/$v"
done

# The baseline row: the same evaluation of the first variant's network at initialisation.
first=${variants%% *}
evaluate "$out/random" eval "$ntrain" "$ntest" "${modes[@]}" --checkpoint "$out/$first" --random-init

# Raw pixels on the same split: the baseline every feature has to beat.
evaluate "$out/pixels" eval "$ntrain" "$ntest" knn --pixels --checkpoint "$out/$first"

# kNN and the linear probe on the whole split (one standard error ~0.5 points instead of ~1.6 on
# 1000 test images): the figures to compare variants by.
kl=knn,linear
if [ "$full" = 1 ]; then
  for v in $variants; do
    evaluate "$out/$v" eval_full 50000 10000 "$kl" --checkpoint "$out/$v"
  done
  evaluate "$out/random" eval_full 50000 10000 "$kl" --checkpoint "$out/$first" --random-init
  evaluate "$out/pixels" eval_full 50000 10000 knn --pixels --checkpoint "$out/$first"
fi

# The tables, from each run's evaluation table (lines "mode metric value").
get() { awk -v m="$2" -v k="$3" -v f="${4:-%.2f}" '$1 == m && $2 == k { printf f, $3 }' "$1"; }
{
  p=$out/pixels/eval.log
  echo "Raw pixels on the same split: kNN top-1 $(get "$p" knn top1) (centred $(get "$p" knn top1_centred))."
  echo
  echo "| variant | steps x batch | kNN top-1 | linear top-1 | linear on rot90 / rot180 / hflip test images | consistency rot90 / hflip / scale 0.75 / 1.25 | token-map equivariance error, mean (map) | train min | eval min |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for v in random $variants; do
    e=$out/$v/eval.log
    label=$v budget=0
    if [ "$v" = random ]; then
      label="random init ($first)"
    else
      n=$(wc -l < "$out/$v/metrics.jsonl" 2>/dev/null || echo 0)
      budget="$n x 128"
    fi
    secs=$(awk '{ s += $1 } END { print s + 0 }' "$out/$v/train_seconds" 2>/dev/null || echo 0)
    echo "| $label | $budget | $(get "$e" knn top1) | $(get "$e" linear test_top1) |" \
         "$(get "$e" robustness rot90) / $(get "$e" robustness rot180) / $(get "$e" robustness hflip) |" \
         "$(get "$e" equivariance consistency.rot90 %.3f) / $(get "$e" equivariance consistency.hflip %.3f) /" \
         "$(get "$e" equivariance consistency.scale0.75 %.3f) / $(get "$e" equivariance consistency.scale1.25 %.3f) |" \
         "$(get "$e" equivariance error.mean %.3f) (block $(get "$e" equivariance map_block %.0f)) |" \
         "$(( secs / 60 )) |" \
         "$(( $(cat "$out/$v/eval_seconds" 2>/dev/null || echo 0) / 60 )) |"
  done
  if [ "$full" = 1 ]; then
    p=$out/pixels/eval_full.log
    echo
    echo "The whole split (50000 train / 10000 test images); raw pixels: kNN top-1 $(get "$p" knn top1)" \
         "(centred $(get "$p" knn top1_centred))."
    echo
    echo "| variant | kNN top-1 | linear top-1 |"
    echo "|---|---|---|"
    for v in random $variants; do
      e=$out/$v/eval_full.log
      label=$v
      [ "$v" = random ] && label="random init ($first)"
      echo "| $label | $(get "$e" knn top1) | $(get "$e" linear test_top1) |"
    done
  fi
} > "$out/results.md"
echo "== results (eval on $ntrain train / $ntest test images, and the whole split)"
cat "$out/results.md"
bash experiments/plot_knn.sh "$out/knn_curves.png" $(for v in $variants; do echo "$out/$v"; done) || true
