#!/usr/bin/env bash
# Fashion-MNIST recipe sweep: trains a preset once per variant (each variant = the preset plus
# a few key=value changes), then measures every run with the same kNN on two splits: the
# demo's 5000 train / 1000 test images, and 10000 / 10000, where one standard error is about
# 0.4 points instead of 1.3 (docs/recipes.md). The random network and the raw pixels are
# measured on both splits too. This is how the rows of docs/recipes.md were made.
#
#   bash experiments/fashion.sh VARIANT [VARIANT...]
#   VARIANT = NAME[:key=value[,key=value...]]       e.g.  ref  h2:model.heads=2
#
#   bash experiments/fashion.sh ref h2:model.heads=2 lam1:ser.lambda=1.0
#   SER_EXP_CONFIG=configs/barlow_fashion.ini bash experiments/fashion.sh ref lr4:optim.lr=4e-3
#
# Environment: SER_EXP_CONFIG (the preset, default configs/demo_fashion.ini), SER_EXP_ITERS
# (iterations per schedule epoch: default 250, i.e. the preset's 4 epochs over 1000 steps, the
# sweep's schedule; "data" = the preset's own, sized by the data: 4 x 469 steps),
# SER_EXP_STEPS (stop each run after K steps), SER_EXP_OUT (default runs/fashion), SER_BIN
# (default build/ser), SER_EXP_DATA (the Fashion-MNIST folder, default Debian's
# /usr/share/datasets/fashion-mnist), SER_EXP_EVAL (the two splits, default "5000/1000
# 10000/10000"). Runs already finished are kept (delete RUN/final.safetensors to redo one).
# Results: $SER_EXP_OUT/results.md (a table) and knn_curves.png (with gnuplot).
# Exit 77 without the dataset (apt-get install dataset-fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
cfg=${SER_EXP_CONFIG:-configs/demo_fashion.ini}
iters=${SER_EXP_ITERS:-250}
steps=${SER_EXP_STEPS:-}
out=${SER_EXP_OUT:-runs/fashion}
ser=${SER_BIN:-./build/ser}
data=${SER_EXP_DATA:-/usr/share/datasets/fashion-mnist}
splits=${SER_EXP_EVAL:-"5000/1000 10000/10000"}
[ -f "$cfg" ] || { echo "experiments/fashion.sh: no preset $cfg (SER_EXP_CONFIG)" >&2; exit 2; }
[ -x "$ser" ] || { echo "experiments/fashion.sh: no ser executable at $ser (bash deploy/build.sh, or SER_BIN)" >&2; exit 2; }
[ -d "$data" ] || { echo "experiments/fashion.sh: skipped: no Fashion-MNIST at $data (apt-get install dataset-fashion-mnist, or SER_EXP_DATA)"; exit 77; }
[ "$iters" = data ] || [[ "$iters" =~ ^[1-9][0-9]*$ ]] ||
  { echo "experiments/fashion.sh: SER_EXP_ITERS must be a positive number or 'data', not '$iters'" >&2; exit 2; }
for split in $splits; do
  [[ "$split" =~ ^[1-9][0-9]*/[1-9][0-9]*$ ]] ||
    { echo "experiments/fashion.sh: SER_EXP_EVAL: '$split' is not TRAIN/TEST (e.g. 5000/1000)" >&2; exit 2; }
done
# Parse every variant before training anything: a typo must not cost a run.
names=()
declare -A sets
for v in "$@"; do
  name=${v%%:*} kvs=
  [[ "$v" == *:* ]] && kvs=${v#*:}
  [[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] ||
    { echo "experiments/fashion.sh: variant name '$name' (from '$v'): letters, digits, _ . - only" >&2; exit 2; }
  [ -z "${sets[$name]+x}" ] || { echo "experiments/fashion.sh: variant '$name' given twice" >&2; exit 2; }
  args=
  IFS=, read -r -a pairs <<< "$kvs"
  for kv in "${pairs[@]}"; do
    [[ "$kv" =~ ^[a-z_]+\.[a-z_0-9]+=[^[:space:]]+$ ]] ||
      { echo "experiments/fashion.sh: variant '$name': '$kv' is not section.key=value" >&2; exit 2; }
    args+=" --set $kv"
  done
  names+=("$name") sets[$name]=$args
done
mkdir -p "$out"
out=$(cd "$out" && pwd)

common=(local --config "$cfg" --workers 2 --set data.path="$data" --set cluster.status_port=0)
[ "$iters" = data ] || common+=(--set data.iters_per_epoch="$iters" --set eval.knn_every="$iters")
[ -n "$steps" ] && common+=(--steps "$steps")
knn() {  # knn OUTFILE TRAIN TEST ARGS...: top-1 lines of `ser eval knn` on one split
  local f=$1 ntr=$2 nte=$3; shift 3
  "$ser" eval knn --data "fashion-mnist:$data" --train-limit "$ntr" --test-limit "$nte" "$@" > "$f" 2>&1 ||
    { echo "experiments/fashion.sh: evaluation failed, see $f" >&2; exit 1; }
}
top1() { awk -v m="${2:-top1}" '$1 == "knn" && $2 == m { printf "%.2f", $3 }' "$1"; }

for name in "${names[@]}"; do
  run=$out/$name
  if [ ! -f "$run/final.safetensors" ]; then
    mkdir -p "$run"
    echo "== $name: $cfg${sets[$name]}"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    "$ser" "${common[@]}" ${sets[$name]} --set run.out_dir="$run" --out "$run/final.safetensors" \
      > "$run/train.log" 2>&1 || { echo "== $name: training failed, see $run/train.log" >&2; exit 1; }
    echo $(( $(date +%s) - t0 )) > "$run/train_seconds"
  fi
  for split in $splits; do
    f=$run/knn_${split/\//_}.txt
    [ -s "$f" ] || knn "$f" "${split%/*}" "${split#*/}" --checkpoint "$run"
  done
  echo "== $name: kNN$(for s in $splits; do printf ' %s %s' "$s" "$(top1 "$run/knn_${s/\//_}.txt")"; done)"
done

# The baselines on the same splits: the first variant's network at initialisation, and pixels.
first=${names[0]}
for split in $splits; do
  b=$out/baseline_${split/\//_}
  [ -s "$b.random" ] || knn "$b.random" "${split%/*}" "${split#*/}" --checkpoint "$out/$first" --random-init
  [ -s "$b.pixels" ] || knn "$b.pixels" "${split%/*}" "${split#*/}" --checkpoint "$out/$first" --pixels
done

{
  echo "Preset \`$cfg\`, schedule epochs of $iters steps${steps:+, stopped after $steps steps}; kNN top-1 (k 20, T 0.07) of the final [CLS]."
  echo
  printf '| variant | changes | steps | train s | median s/step |'
  for s in $splits; do printf ' kNN %s |' "$s"; done; echo
  printf '|---|---|---|---|---|'; for _ in $splits; do printf -- '---|'; done; echo
  for name in "${names[@]}"; do
    run=$out/$name
    nsteps=$(grep -o 'run summary: [0-9]* steps' "$run/train.log" | awk '{ print $3 }')
    med=$(grep -o 'median [0-9.]* s/step' "$run/train.log" | awk '{ print $2 }')
    printf '| %s | %s | %s | %s | %s |' "$name" "$(echo "${sets[$name]}" | sed 's/ --set / /g; s/^ //')" \
      "${nsteps:-?}" "$(cat "$run/train_seconds" 2>/dev/null || echo '?')" "${med:-?}"
    for s in $splits; do printf ' %s |' "$(top1 "$run/knn_${s/\//_}.txt")"; done; echo
  done
  printf '| random init (%s) | | 0 | | |' "$first"
  for s in $splits; do printf ' %s |' "$(top1 "$out/baseline_${s/\//_}.random")"; done; echo
  printf '| raw pixels / centred | | | | |'
  for s in $splits; do
    b=$out/baseline_${s/\//_}.pixels; printf ' %s / %s |' "$(top1 "$b")" "$(top1 "$b" top1_centred)"
  done; echo
} > "$out/results.md"
cat "$out/results.md"
if command -v gnuplot > /dev/null; then
  runs=(); for name in "${names[@]}"; do runs+=("$out/$name"); done
  bash experiments/plot_knn.sh "$out/knn_curves.png" "${runs[@]}" || true
fi
