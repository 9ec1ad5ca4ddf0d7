#!/usr/bin/env bash
# test_netlink.sh SER BENCH_LINK — the coordinator's traffic cost model (docs/cost-model.md) on
# a tc-shaped link, through tools/bench_link.sh (the coordinator in a network namespace of its
# own, every byte to or from it through a veth pair limited to the rate):
#   the coordinator's bytes/step sent and received are the model's, 4P x N + rows and
#   4P x S + rows, within 2%, for 1 worker x 2 shards and 2 workers x 4 shards at 1 Gbit/s
#   (and unshaped);
#   the resend storm is gone: 2 workers x 2 shards at 200 Mbit/s with 100 ms heartbeats, where
#   sending PARAMS to the workers takes ~1.8 s (> 3 heartbeats: a worker still receiving them
#   says it is idle), finishes its steps with no PARAMS sent again (first step included), in
#   the model's step time (the unshaped step + the link time of its bytes) within 15%;
#   with both chains (cluster.reduce = chain, cluster.broadcast = tree) the coordinator's
#   bytes/step are constant, 4P + rows each way, within 2%, for N = 1, 2, 4, 8 workers and
#   S = 8, 16 shards (16 px images: the bytes do not depend on the compute), no PARAMS resent.
# Skipped (exit 77), saying why, where namespaces or tc are not permitted (not root, no
# ip/tc, unshare -n fails). About 2-3 minutes on 2 cores. ctest: netlink_cost_model.
set -u
SER=${1:?usage: test_netlink.sh path/to/ser tools/bench_link.sh}
BENCH=${2:?usage: test_netlink.sh path/to/ser tools/bench_link.sh}
PATH=$PATH:/usr/sbin:/sbin
skip() { echo "SKIPPED: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "not root: network namespaces and tc need CAP_NET_ADMIN"
for t in ip tc unshare; do command -v $t > /dev/null || skip "no '$t' (iproute2, util-linux)"; done
timeout 10 unshare -n true 2> /dev/null || skip "unshare -n fails: network namespaces not permitted here"
T=$(mktemp -d /tmp/ser_test_netlink_XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# The bench, one JSON object per row; its stderr and table shown when a check fails.
bench() {  # bench OUT ARGS...
  local out=$1
  shift
  timeout -k 10 200 bash "$BENCH" --ser "$SER" --steps 4 --run-timeout 60 --json "$@" > "$T/$out" 2> "$T/$out.err"
  local rc=$?
  [ $rc = 77 ] && skip "$(grep SKIPPED "$T/$out" | head -1)"
  [ $rc = 0 ] || fail "bench_link.sh $*: exit $rc: $(tail -c 600 "$T/$out.err")"
  cat "$T/$out"
}
# field ROW KEY: a number or string of a JSON row (flat, no nesting).
field() { echo "$1" | grep -o "\"$2\":\"\?[^,\"}]*" | sed -E 's/.*:"?//'; }
# within X LO HI: LO <= X <= HI.
within() { awk -v x="$1" -v lo="$2" -v hi="$3" 'BEGIN { exit !(x != "" && x >= lo && x <= hi) }'; }

bench bytes.json --points "1x2 2x4" --rates 1gbit
rows=0
while read -r row; do
  [ -n "$row" ] || continue
  rows=$((rows + 1))
  what="$(field "$row" n) workers x $(field "$row" s) shards at $(field "$row" rate)"
  [ "$(field "$row" status)" = ok ] || { fail "$what: $(field "$row" status)"; continue; }
  sent=$(field "$row" sent) recv=$(field "$row" recv)
  ms=$(field "$row" model_sent) mr=$(field "$row" model_recv)
  echo "$what: sent $sent (model $ms), received $recv (model $mr), $(field "$row" resent) PARAMS resent"
  # The model sends PARAMS to every worker; a worker that takes no shard of a step (on a busy
  # machine one worker can pull all of them) is sent none, so the sent bytes must match the
  # model for k of the n workers, 1 <= k <= n, to 2%.
  n=$(field "$row" n) P=$(field "$row" P)
  k=$(awk -v a="$sent" -v m="$ms" -v n="$n" -v P="$P" 'BEGIN { k = int((a - m + 4 * n * P) / (4 * P) + 0.5); print (k < 1 ? 1 : k > n ? n : k) }')
  mk=$(awk -v m="$ms" -v n="$n" -v k="$k" -v P="$P" 'BEGIN { print m - 4 * (n - k) * P }')
  [ "$k" = "$n" ] || echo "$what: PARAMS went to $k of $n workers in the median step (the others took no shard)"
  within "$(awk -v a="$sent" -v b="$mk" 'BEGIN { print a / b }')" 0.98 1.02 || fail "$what: sent $sent bytes/step, the model $ms ($mk for $k of $n workers)"
  within "$(awk -v a="$recv" -v b="$mr" 'BEGIN { print a / b }')" 0.98 1.02 || fail "$what: received $recv bytes/step, the model $mr"
  [ "$(field "$row" resent)" = 0 ] || fail "$what: $(field "$row" resent) PARAMS resent"
done < "$T/bytes.json"
[ $rows = 4 ] || fail "bytes: $rows rows, not 4 (1x2 and 2x4, unshaped and at 1gbit)"

# The storm case: PARAMS to the workers take longer than 3 heartbeats.
bench storm.json --points 2x2 --rates 200mbit --heartbeat-ms 100
row=$(grep '"rate":"200mbit"' "$T/storm.json")
if [ "$(field "$row" status)" != ok ]; then
  fail "2 workers x 2 shards at 200mbit, 100 ms heartbeats: ${row:-no row} (the resend storm?)"
else
  pall=$(field "$row" params_to_all_s) hb3=$(field "$row" heartbeats3_s)
  step=$(field "$row" step_s) model=$(field "$row" model_s) ratio=$(field "$row" time_ratio)
  echo "storm case: PARAMS to all workers ${pall} s (3 heartbeats ${hb3} s), step $step s," \
       "model $model s (ratio $ratio), $(field "$row" resent) PARAMS resent ($(field "$row" resent_all) in all)"
  within "$pall" "$hb3" 1e9 || fail "the storm case is not one: PARAMS to all take $pall s, 3 heartbeats $hb3 s"
  [ "$(field "$row" resent)" = 0 ] || fail "storm case: $(field "$row" resent) PARAMS resent after the first step"
  [ "$(field "$row" resent_all)" = 0 ] || fail "storm case: $(field "$row" resent_all) PARAMS resent in all"
  within "$ratio" 0.85 1.15 || fail "storm case: step $step s, the model's $model s (ratio $ratio, want 0.85..1.15)"
fi

# Both chains: constant bytes through the coordinator, whatever N and S.
bench chains.json --chains --points "1x8 2x8 4x8 8x8 1x16 2x16 4x16 8x16" --rates "" --img 16 --steps 3
rows=0 P=
while read -r row; do
  [ -n "$row" ] || continue
  rows=$((rows + 1))
  what="chains: $(field "$row" n) workers x $(field "$row" s) shards"
  [ "$(field "$row" status)" = ok ] || { fail "$what: $(field "$row" status)"; continue; }
  sent=$(field "$row" sent) recv=$(field "$row" recv) P=$(field "$row" P)
  ms=$(field "$row" model_sent) mr=$(field "$row" model_recv)
  echo "$what: sent $sent (model $ms), received $recv (model $mr), 4P = $((4 * P)), $(field "$row" resent) PARAMS resent"
  within "$(awk -v a="$sent" -v b="$ms" 'BEGIN { print a / b }')" 0.98 1.02 || fail "$what: sent $sent bytes/step, the model $ms"
  within "$(awk -v a="$recv" -v b="$mr" 'BEGIN { print a / b }')" 0.98 1.02 || fail "$what: received $recv bytes/step, the model $mr"
  within "$(awk -v a="$sent" -v p="$P" 'BEGIN { print a / (4 * p) }')" 1 1.2 || fail "$what: sent $sent bytes/step, not about 4P"
  within "$(awk -v a="$recv" -v p="$P" 'BEGIN { print a / (4 * p) }')" 1 1.2 || fail "$what: received $recv bytes/step, not about 4P"
  [ "$(field "$row" resent)" = 0 ] || fail "$what: $(field "$row" resent) PARAMS resent"
done < "$T/chains.json"
[ $rows = 8 ] || fail "chains: $rows rows, not 8"

if [ "$fails" -gt 0 ]; then
  echo "test_netlink.sh: $fails failures"
  exit 1
fi
echo "test_netlink.sh: all passed"
