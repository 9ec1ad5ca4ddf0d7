#!/usr/bin/env bash
# test_plot_monitors.sh — experiments/plot_monitors.sh on generated metrics.jsonl files: a
# MoCo-like run (cls_std, knn_top1) and a DINO-like run (cls_std, teacher entropy, KL) give a
# PNG with 4 panels; a run that logged no monitor, or a folder without metrics.jsonl, exit 1
# with a message. Skipped (77) without gnuplot. ctest: plot_monitors.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v gnuplot > /dev/null || { echo "SKIPPED: gnuplot is not installed (gnuplot-nox)"; exit 77; }
T=$(mktemp -d /tmp/ser_test_plot_monitors_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
mkdir -p "$T/moco" "$T/dino" "$T/none" "$T/empty"
for s in 0 1 2 3; do
  echo "{\"step\":$s,\"loss\":1.5,\"cls_std\":0.$((8 - s))$( [ $s = 3 ] && echo ',"knn_top1":61.5')}" >> "$T/moco/metrics.jsonl"
  echo "{\"step\":$s,\"loss\":6.1,\"cls_std\":0.5,\"dino_teacher_entropy\":6.$s,\"dino_kl\":0.1$s}" >> "$T/dino/metrics.jsonl"
  echo "{\"step\":$s,\"loss\":1.0}" >> "$T/none/metrics.jsonl"
done
out=$(bash "$ROOT/experiments/plot_monitors.sh" "$T/m.png" "$T/moco" "$T/dino" 2>&1) || fail "plot failed: $out"
grep -q "(4 panels)" <<< "$out" || fail "expected 4 panels (cls_std, entropy, KL, kNN): $out"
[ "$(head -c 8 "$T/m.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$T/m.png is not a PNG"
out=$(bash "$ROOT/experiments/plot_monitors.sh" "$T/n.png" "$T/none" 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "no run logged a monitor" <<< "$out" || fail "no monitors: rc $rc: $out"
out=$(bash "$ROOT/experiments/plot_monitors.sh" "$T/e.png" "$T/empty" 2>&1); rc=$?
[ $rc -eq 1 ] && grep -q "no $T/empty/metrics.jsonl" <<< "$out" || fail "no metrics.jsonl: rc $rc: $out"
[ ! -e "$T/n.png" ] && [ ! -e "$T/e.png" ] || fail "a PNG was written for a refused call"
echo PASS
