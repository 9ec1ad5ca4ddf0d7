#!/usr/bin/env bash
# Plots the collapse monitors of one or more runs (from each RUN_DIR/metrics.jsonl) into one PNG
# with gnuplot (Debian's gnuplot-nox): one panel per monitor that any run logged, among
#   cls_std               the L2-normalised final [CLS]'s per-dimension std x sqrt(d), every method
#   dino_teacher_entropy  DINO: entropy of the teacher's centred, sharpened output (nats)
#   dino_kl               DINO: KL(teacher || student)
#   barlow_on_diag        Barlow Twins: the on-diagonal (invariance) term
#   barlow_off_diag       Barlow Twins: the off-diagonal (redundancy) term, log scale
#   knn_top1              the online kNN monitor (%)
# Each curve is named after its run folder (docs/config.md, [run] on_collapse, says which
# thresholds warn).
#
#   bash experiments/plot_monitors.sh OUT.png RUN_DIR [RUN_DIR...]
#
# Exit 3 (and a message) without gnuplot, 1 when a run has no metrics.jsonl or no run logged
# any monitor.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: experiments/plot_monitors.sh OUT.png RUN_DIR [RUN_DIR...]" >&2; exit 2; }
out=$1; shift
command -v gnuplot > /dev/null ||
  { echo "experiments/plot_monitors.sh: gnuplot is not installed (apt-get install gnuplot-nox)" >&2; exit 3; }
for run in "$@"; do
  [ -f "$run/metrics.jsonl" ] || { echo "experiments/plot_monitors.sh: no $run/metrics.jsonl" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
keys=(cls_std dino_teacher_entropy dino_kl barlow_on_diag barlow_off_diag knn_top1)
panels=()
for key in "${keys[@]}"; do
  plots=()
  i=0
  for run in "$@"; do
    # "step":N ... "KEY":X  ->  N X
    awk -v k="\"$key\":" 'match($0, /"step":[0-9]+/) { s = substr($0, RSTART + 7, RLENGTH - 7)
           if (p = index($0, k)) { v = substr($0, p + length(k)); sub(/[,}].*/, "", v); print s, v } }' \
      "$run/metrics.jsonl" > "$tmp/$key.$i"
    [ -s "$tmp/$key.$i" ] && plots+=("'$tmp/$key.$i' using 1:2 with lines lc $((i + 1)) title '$(basename "$run")'")
    i=$((i + 1))
  done
  [ ${#plots[@]} -gt 0 ] || continue
  scale="unset logscale y"
  [ "$key" = barlow_off_diag ] && scale="set logscale y"
  panels+=("set title '$key'; $scale; plot $(IFS=,; echo "${plots[*]}")")
done
[ ${#panels[@]} -gt 0 ] || { echo "experiments/plot_monitors.sh: no run logged a monitor (${keys[*]})" >&2; exit 1; }
n=${#panels[@]}
cols=$(( n < 2 ? 1 : 2 ))
rows=$(( (n + cols - 1) / cols ))
{
  echo "set terminal pngcairo size $((560 * cols)),$((330 * rows)) font ',10' noenhanced"
  echo "set output '$out'"
  echo "set multiplot layout $rows,$cols"
  echo "set xlabel 'step'; set grid; set key bottom right"
  for p in "${panels[@]}"; do echo "$p"; done
  echo "unset multiplot"
} > "$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "wrote $out ($n panels)"
