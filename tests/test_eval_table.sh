#!/usr/bin/env bash
# test_eval_table.sh SER — `ser eval`'s result table is one contiguous block: with stdout and
# stderr on one file (a terminal, `2>&1 | tee`), no log line lands between its header and its
# last row. It runs knn and linear on small subsets of Debian's Fashion-MNIST at the random
# initialisation of a tiny ViT; those modes log while they run. Skipped (77) without the
# dataset. ctest: eval_table.
set -u
SER=${1:?usage: test_eval_table.sh path/to/ser}
DATA=/usr/share/datasets/fashion-mnist
[ -f "$DATA/t10k-images-idx3-ubyte.gz" ] || { echo "SKIPPED: no $DATA (dataset-fashion-mnist)"; exit 77; }
T=$(mktemp -d /tmp/ser_test_eval_table_XXXXXX)
trap 'rm -rf "$T"' EXIT
cat > "$T/job.ini" <<'INI'
[model]
arch = vit_tiny
dim = 24
depth = 2
heads = 3
mlp_hidden = 48
img_size = 28
patch = 7
cls_layer = 1
[moco]
dim = 16
mlp_dim = 32
[ser]
proj_dim = 20
[run]
threads = 1
INI
timeout -k 5 120 "$SER" eval knn,linear --config "$T/job.ini" --random-init \
  --data "fashion-mnist:$DATA" --train-limit 200 --test-limit 50 --epochs 2 --lr 0.1 \
  --k 5 > "$T/out" 2>&1
rc=$?
if [ "$rc" != 0 ]; then cat "$T/out"; echo "FAIL: ser eval exited $rc"; exit 1; fi
# The header, then rows ("mode metric value") up to the first line that is not one; no row
# and no header anywhere else.
awk '
  function is_row(l) { return l ~ /^(knn|linear|equivariance|probe|robustness) +[^ ]+ +-?[0-9.]+$/ }
  /^mode +metric +value$/ { headers++; in_table = 1; next }
  in_table && is_row($0) { rows++; next }
  { in_table = 0 }
  is_row($0) { stray++; print "row outside the table: " $0 }
  END {
    if (headers != 1) { print "FAIL: " headers+0 " table headers"; exit 1 }
    if (rows < 3) { print "FAIL: " rows+0 " rows follow the header (a log line inside the table?)"; exit 1 }
    if (stray) { print "FAIL: " stray " rows apart from the table"; exit 1 }
    print "eval table: header and " rows " rows in one block"
  }' "$T/out" || { echo "--- output:"; cat "$T/out"; exit 1; }
