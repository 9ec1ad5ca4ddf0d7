#!/usr/bin/env bash
# Plots the online kNN monitor's curves (knn_top1 against the step, from each run's
# metrics.jsonl) and the training loss into one PNG with gnuplot (Debian's gnuplot-nox).
#
#   bash experiments/plot_knn.sh OUT.png RUN_DIR [RUN_DIR...]
#
# Each curve is named after its run folder. Exit 3 (and a message) without gnuplot.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: experiments/plot_knn.sh OUT.png RUN_DIR [RUN_DIR...]" >&2; exit 2; }
out=$1; shift
command -v gnuplot > /dev/null ||
  { echo "experiments/plot_knn.sh: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 3; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
knn_plots=() loss_plots=()
i=0
for run in "$@"; do
  name=$(basename "$run")
  m=$run/metrics.jsonl
  [ -f "$m" ] || { echo "experiments/plot_knn.sh: no $m" >&2; exit 1; }
  # "step":N ... "knn_top1":X  ->  N X ; "loss":Y  ->  N Y
  awk 'match($0, /"step":[0-9]+/) { s = substr($0, RSTART + 7, RLENGTH - 7)
         if (match($0, /"knn_top1":[-0-9.e+]+/)) print s, substr($0, RSTART + 11, RLENGTH - 11) }' \
    "$m" > "$tmp/knn$i"
  awk 'match($0, /"step":[0-9]+/) { s = substr($0, RSTART + 7, RLENGTH - 7)
         if (match($0, /"loss":[-0-9.e+]+/)) print s, substr($0, RSTART + 7, RLENGTH - 7) }' \
    "$m" > "$tmp/loss$i"
  knn_plots+=("'$tmp/knn$i' using 1:2 with linespoints title '$name'")
  loss_plots+=("'$tmp/loss$i' using 1:2 smooth bezier title '$name'")
  i=$((i + 1))
done
join() { local IFS=,; echo "$*"; }
gnuplot <<GP
set terminal pngcairo size 1000,760 font ",11" noenhanced
set output '$out'
set multiplot layout 2,1
set title 'online kNN top-1 (monitor subset)'
set xlabel 'step'
set ylabel 'top-1 (%)'
set grid
set key bottom right
plot $(join "${knn_plots[@]}")
set title 'training loss (total)'
set ylabel 'loss'
set key top right
plot $(join "${loss_plots[@]}")
unset multiplot
GP
echo "wrote $out"
