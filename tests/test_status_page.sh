#!/usr/bin/env bash
# test_status_page.sh SER — the status page as a browser renders it: a `ser local` job on
# Fashion-MNIST (Debian's dataset-fashion-mnist) with its status port on, loaded in headless Chromium (Debian's chromium),
# whose DOM after the page's scripts ran must hold the progress bar's text, drawn loss, kNN,
# collapse-monitor and learning-rate curves, the worker table and the data loader's row; and a
# screenshot is taken.
# Skipped (exit 77, with the reason) without chromium or the dataset. Every process is killed by pid; 120 s
# at most. ctest: status_page.
set -u
SER=${1:?usage: test_status_page.sh path/to/ser}
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  echo "SKIPPED: no chromium (apt-get install chromium) to render the status page"
  exit 77
fi
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  echo "SKIPPED: $FMNIST not installed (Debian package dataset-fashion-mnist)"
  exit 77
fi
T=$(mktemp -d /tmp/ser_test_page_XXXXXX)
job=""
cleanup() {
  [ -n "$job" ] && kill "$job" 2>/dev/null && wait "$job" 2>/dev/null
  [ -n "${SER_KEEP_TMP:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
cat > "$T/job.ini" <<'INI'
[model]
arch = vit_tiny
depth = 2
img_size = 28
patch = 7
cls_layer = 1
[moco]
dim = 32
mlp_dim = 64
[ser]
ratio = 0.125
[data]
kind = fashion_mnist
global_batch = 16
shards = 2
[run]
threads = 1
log_every = 1
[eval]
knn_every = -1
INI
"$SER" local --workers 1 --config "$T/job.ini" --steps 100000 --set run.out_dir="$T/run" \
  --set data.path="$FMNIST" \
  --set cluster.status_port=0 > "$T/job.log" 2>&1 &
job=$!
url=""
for _ in $(seq 1 300); do  # 60 s at most for the status line and a few steps
  url=$(grep -o 'status on http://[0-9.:]*/' "$T/job.log" | head -1 | sed 's/^status on //')
  [ -n "$url" ] && grep -q "step 3: loss" "$T/job.log" && break
  sleep 0.2
done
[ -n "$url" ] || { echo "FAIL: no status URL in the job's log"; tail -20 "$T/job.log"; exit 1; }
flags=(--headless --disable-gpu --no-sandbox --hide-scrollbars --virtual-time-budget=4000)
timeout 45 "$CHROMIUM" "${flags[@]}" --dump-dom "$url" > "$T/dom.html" 2> "$T/chromium.err"
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
grep -q "steps (" "$T/dom.html" || fail "no progress text"
for id in chart stdchart lrchart; do  # each chart has a drawn curve
  perl -0ne "print \$1 if /<svg id=\"$id\"(.*?)<\\/svg>/s" "$T/dom.html" | grep -q "<polyline" ||
    fail "chart $id has no curve"
done
grep -q "cls_std" "$T/dom.html" || fail "no cls_std legend"
grep -q ">w0<\\|>w[0-9]*<" "$T/dom.html" || fail "no worker row"
# The data loader's row: its endpoint (from the job's log) and its counters.
lep=$(grep -o 'local: data loader on tcp://[0-9.:]*' "$T/job.log" | head -1 | sed 's/^local: data loader on //')
perl -0ne 'print $1 if /<table id="loaders"(.*?)<\/table>/s' "$T/dom.html" > "$T/loaders.html"
grep -q "shards served" "$T/loaders.html" || fail "no loader table header"
[ -n "$lep" ] && grep -qF ">$lep<" "$T/loaders.html" || fail "no row of the loader $lep"
timeout 45 "$CHROMIUM" "${flags[@]}" --window-size=1100,1400 --screenshot="$T/page.png" "$url" \
  > /dev/null 2>&1
[ -s "$T/page.png" ] || fail "no screenshot"
[ "$fails" = 0 ] && echo "status page: all passed ($url)"
exit $((fails > 0))
