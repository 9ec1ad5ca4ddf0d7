#!/usr/bin/env bash
# test_fashion_sweep.sh SER — experiments/fashion.sh end to end, shortened: two variants of the
# demo preset (the second with 2 heads) for 3 steps each, kNN on two small splits, and the table
# with a row per variant, the random network and the pixels. Bad variants and settings are
# refused (exit 2, naming what is wrong) before anything trains. Skipped (77) without Debian's
# Fashion-MNIST. ctest: fashion_sweep.
set -u
SER=${1:?usage: test_fashion_sweep.sh path/to/ser}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA=/usr/share/datasets/fashion-mnist
[ -f "$DATA/t10k-images-idx3-ubyte.gz" ] || { echo "SKIPPED: no $DATA (dataset-fashion-mnist)"; exit 77; }
T=$(mktemp -d /tmp/ser_test_fashion_sweep_XXXXXX)
trap 'rm -rf "$T"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
sweep() { SER_BIN="$SER" SER_EXP_OUT="$T/out" SER_EXP_STEPS=3 SER_EXP_EVAL="200/100 300/100" \
            bash "$ROOT/experiments/fashion.sh" "$@"; }

# Refusals: exit 2, a message naming the problem, no run folder made.
expect_refusal() {  # expect_refusal PATTERN VARIANT...
  local pat=$1; shift
  out=$(sweep "$@" 2>&1); rc=$?
  [ $rc -eq 2 ] || fail "'$*' exited $rc, not 2: $out"
  grep -q -- "$pat" <<< "$out" || fail "'$*': no '$pat' in: $out"
  [ ! -d "$T/out" ] || fail "'$*' made $T/out before refusing"
}
expect_refusal "is not section.key=value" ok "bad:model.heads"
expect_refusal "letters, digits" "a b:model.heads=2"
expect_refusal "given twice" x x:model.heads=2
out=$(SER_EXP_ITERS=0 sweep ok 2>&1); [ $? -eq 2 ] && grep -q "SER_EXP_ITERS" <<< "$out" || fail "SER_EXP_ITERS=0: $out"

# Two variants, 3 steps each.
out=$(timeout -k 5 500 bash -c "$(declare -f sweep); SER='$SER' T='$T' ROOT='$ROOT' sweep ref h2:model.heads=2" 2>&1) ||
  fail "the sweep failed: $out"
r=$T/out/results.md
[ -f "$r" ] || fail "no results.md: $out"
cat "$r"
num='[0-9]+\.[0-9]{2}'
grep -Eq "^\| ref \|  \| 3 \| [0-9]+ \| [0-9.]+ \| $num \| $num \|$" "$r" || fail "no ref row"
grep -Eq "^\| h2 \| model\.heads=2 \| 3 \| [0-9]+ \| [0-9.]+ \| $num \| $num \|$" "$r" || fail "no h2 row"
grep -Eq "^\| random init \(ref\) \| \| 0 \| \| \| $num \| $num \|$" "$r" || fail "no random row"
grep -Eq "^\| raw pixels / centred \| \| \| \| \| $num / $num \| $num / $num \|$" "$r" || fail "no pixels row"
# The variant's setting reached the job: the checkpoints' configs say 2 heads for h2, 4 for ref.
hd() { head -c 20000 "$(ls "$T/out/$1"/ckpt-*.safetensors | tail -1)" | grep -ao 'heads = [0-9]*' | head -1; }
[ "$(hd h2)" = "heads = 2" ] || fail "h2's checkpoint: '$(hd h2)'"
[ "$(hd ref)" = "heads = 4" ] || fail "ref's checkpoint: '$(hd ref)'"
# A second call keeps the finished runs (no retraining) and prints the same table.
before=$(cat "$r")
out=$(sweep ref h2:model.heads=2 2>&1) || fail "the second call failed: $out"
grep -q "^== ref: configs/" <<< "$out" && fail "ref was trained again: $out"
[ "$(cat "$r")" = "$before" ] || fail "the table changed on the second call"
echo "PASS"
