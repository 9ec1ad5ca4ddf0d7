#!/usr/bin/env bash
# bench_link.sh — the coordinator's traffic cost model (docs/cost-model.md) against the
# implementation on a rate-limited link. The coordinator runs in a network namespace of its own,
# the workers in another; one veth pair joins them and tc's tbf limits both of its ends (the
# egress of each), so every byte to or from the coordinator crosses a link of RATE. For each
# point N workers x S shards it runs a real job (`ser coordinator` with a batch file, N
# `ser worker`), once on the unshaped veth and once per rate, and prints the coordinator's
# bytes/step and median step time (from its run summary, steps after the first) against the
# model:
#   bytes/step = 4P(N + S) + rows (with --chains: 2 x 4P + rows, the parameters passed and the
#     shard gradients summed along the workers, whose links to each other are not shaped here), = 4C(2B + T) sent + 4C(4B + 2T) received
#     (P backbone parameters, C width, B global batch, T tokens of the equivariant views);
#   step time  = unshaped step + h * bytes/step / rate
#     (the PARAMS to the N workers and the S gradients back do not overlap: the first comes
#     before any forward, the second after the backward; h = 1514/1448 = 1.0456, the Ethernet,
#     IP and TCP headers of a 1500-byte MTU that tbf counts),
# and the PARAMS the coordinator sent again after the first step (the resend storm).
# Needs root (network namespaces, tc) and iproute2: otherwise it exits 77 saying why.
# Every process it starts runs under `timeout` and is killed by pid on exit; the namespaces
# (and with them the veth pair) are deleted on exit, and those of an earlier run that was
# killed are deleted at start.
# Exit status: 0 every run finished, 1 a run failed or ran out of time (its row says so),
# 2 bad option, 77 namespaces or tc not permitted here.
set -u

usage() {
  cat <<'EOF'
usage: tools/bench_link.sh [--ser PATH] [--points "NxS ..."] [--rates "RATE ..."]
                           [--steps K] [--model M] [--img N] [--patch P] [--shard-batch B]
                           [--eq E] [--heartbeat-ms H] [--timeout-ms T] [--run-timeout S]
                           [--chains] [--json] [--keep]
  Runs a job per point and rate with the coordinator behind a tc-shaped veth link and
  compares its bytes/step and step time with docs/cost-model.md's model.
  --points: N workers x S shards ("1x2 2x2 2x4 4x4"); --rates: tc rates ("1gbit 200mbit");
  each point also runs unshaped (the model's compute time). --steps: steps per run (4; the
  first is left out). The job: `ser bench cluster --write-job` with --model (vit_tiny),
  --img (32), --patch (4), --shard-batch (2), --eq (1), run.threads = cores / N.
  --heartbeat-ms (1000), --timeout-ms (10000): the job's cluster.heartbeat_ms and timeout_ms.
  --run-timeout: seconds one run may take (300). --json: one JSON object per row.
  --chains: cluster.reduce = chain and cluster.broadcast = tree (the workers pass the
  parameters and the gradient sum along; the coordinator sends and receives one copy a step).
  --keep: keep the logs (their folder is printed). --ser: the binary (ser on PATH).
  Exit status: 0 all ran, 1 a run failed or timed out, 2 bad option, 77 not permitted here.
EOF
}

SER=$(command -v ser || true)
POINTS="1x2 2x2 2x4 4x4"
RATES="1gbit 200mbit"
STEPS=4 MODEL=vit_tiny IMG=32 PATCH=4 SB=2 EQ=1 HB=1000 TO=10000 RUN_TIMEOUT=300 JSON=0 KEEP=0
REDUCE=coordinator
while [ $# -gt 0 ]; do
  opt=$1 val=
  case $opt in
    --*=*) val=${opt#*=} opt=${opt%%=*} ;;
    --json | --keep | --chains | -h | --help) ;;
    --ser | --points | --rates | --steps | --model | --img | --patch | --shard-batch | --eq | \
    --heartbeat-ms | --timeout-ms | --run-timeout)
      [ $# -ge 2 ] || { echo "bench_link.sh: $opt needs a value" >&2; exit 2; }
      val=$2; shift ;;
  esac
  shift
  case $opt in
    --ser) SER=$val ;;
    --points) POINTS=$val ;;
    --rates) RATES=$val ;;
    --steps) STEPS=$val ;;
    --model) MODEL=$val ;;
    --img) IMG=$val ;;
    --patch) PATCH=$val ;;
    --shard-batch) SB=$val ;;
    --eq) EQ=$val ;;
    --heartbeat-ms) HB=$val ;;
    --timeout-ms) TO=$val ;;
    --run-timeout) RUN_TIMEOUT=$val ;;
    --chains) REDUCE=chain ;;
    --json) JSON=1 ;;
    --keep) KEEP=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench_link.sh: unknown option $opt" >&2; usage >&2; exit 2 ;;
  esac
done
for v in "$STEPS" "$IMG" "$PATCH" "$SB" "$EQ" "$HB" "$TO" "$RUN_TIMEOUT"; do
  [[ $v =~ ^[0-9]+$ ]] || { echo "bench_link.sh: '$v' is not a number" >&2; exit 2; }
done
[ "$STEPS" -ge 2 ] || { echo "bench_link.sh: --steps must be at least 2" >&2; exit 2; }
case $MODEL in
  vit_tiny) C=192 ;; vit_small) C=384 ;; vit_base) C=768 ;;
  *) echo "bench_link.sh: --model vit_tiny, vit_small or vit_base, not '$MODEL'" >&2; exit 2 ;;
esac
# A tc rate (NUMBER[k|m|g]bit, or bit) in bits/s; tc's units are decimal.
rate_bps() {
  local r=$1 m
  [[ $r =~ ^([0-9]+(\.[0-9]+)?)(kbit|mbit|gbit|bit)$ ]] || return 1
  case ${BASH_REMATCH[3]} in kbit) m=1e3 ;; mbit) m=1e6 ;; gbit) m=1e9 ;; bit) m=1 ;; esac
  awk -v x="${BASH_REMATCH[1]}" -v m="$m" 'BEGIN { printf "%.0f", x * m }'
}
for r in $RATES; do
  rate_bps "$r" > /dev/null || { echo "bench_link.sh: rate '$r': want e.g. 200mbit, 1gbit" >&2; exit 2; }
done
for p in $POINTS; do
  [[ $p =~ ^([0-9]+)x([0-9]+)$ ]] && [ "${BASH_REMATCH[1]}" -ge 1 ] && [ "${BASH_REMATCH[2]}" -ge 1 ] ||
    { echo "bench_link.sh: point '$p': want NxS, e.g. 2x4" >&2; exit 2; }
done
[ -n "$SER" ] && [ -x "$SER" ] || { echo "bench_link.sh: no ser binary (--ser PATH)" >&2; exit 2; }
for t in ip tc timeout awk; do
  command -v $t > /dev/null || PATH=$PATH:/usr/sbin:/sbin
  command -v $t > /dev/null || { echo "bench_link.sh: SKIPPED: no '$t' (iproute2, coreutils)"; exit 77; }
done

# --- namespaces: NSC (the coordinator) --veth-- NSW (workers), 10.214.X.{2,1}/30 -------------
ID=$$
NSC=serlink${ID}c NSW=serlink${ID}w
NET=10.214.$((ID % 250 + 1))
T=$(mktemp -d /tmp/ser_bench_link_XXXXXX)
PIDS=()

# Ends a process started here (a `timeout` wrapping ser) and the ser under it, by pid.
stop_pid() {
  local pid=$1 kid
  kill -0 "$pid" 2> /dev/null || return 0
  kid=$(ps -o pid= --ppid "$pid" 2> /dev/null | tr -d ' ')
  kill -TERM "$pid" 2> /dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2> /dev/null || break; sleep 0.1; done
  for p in $kid $pid; do kill -KILL "$p" 2> /dev/null; done
  wait "$pid" 2> /dev/null
}
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  PIDS=()
}
netns_down() {
  timeout 10 ip netns del "$NSC" 2> /dev/null
  timeout 10 ip netns del "$NSW" 2> /dev/null
}
cleanup() {
  stop_all
  netns_down
  if [ "$KEEP" = 1 ]; then echo "bench_link.sh: logs kept in $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# The namespaces of earlier runs that were killed before their cleanup (their pid is gone).
for ns in $(ip netns list 2> /dev/null | grep -o '^serlink[0-9]*[cw]'); do
  pid=${ns#serlink} pid=${pid%[cw]}
  kill -0 "$pid" 2> /dev/null || timeout 10 ip netns del "$ns" 2> /dev/null
done

# Runs a set-up command; on failure says why and exits 77 (not permitted here).
must() {
  local out
  if ! out=$(timeout 10 "$@" 2>&1); then
    echo "bench_link.sh: SKIPPED: \`$*\` failed: ${out:-exit status $?} (needs root: network namespaces, veth and tc tbf)"
    exit 77
  fi
}
must ip netns add "$NSC"
must ip netns add "$NSW"
must ip link add vc netns "$NSC" type veth peer name vw netns "$NSW"
must ip -n "$NSC" addr add "$NET.2/30" dev vc
must ip -n "$NSW" addr add "$NET.1/30" dev vw
for ns in "$NSC" "$NSW"; do must ip -n "$ns" link set lo up; done
must ip -n "$NSC" link set vc up
must ip -n "$NSW" link set vw up
must tc -n "$NSC" qdisc add dev vc root tbf rate 1gbit burst 64kb latency 100ms
must tc -n "$NSC" qdisc del dev vc root

# Both ends of the link at RATE (none: unshaped). The burst is 64 KB or 2 ms of the rate.
shape() {
  local rate=$1 dev ns burst
  for dev in vc vw; do
    ns=$NSC; [ $dev = vw ] && ns=$NSW
    timeout 10 tc -n "$ns" qdisc del dev $dev root 2> /dev/null
    [ "$rate" = none ] && continue
    burst=$(awk -v b="$(rate_bps "$rate")" 'BEGIN { x = b / 8 * 0.002; printf "%d", (x > 65536 ? x : 65536) }')
    must tc -n "$ns" qdisc add dev $dev root tbf rate "$rate" burst "$burst" latency 100ms
  done
}

# --- one run ---------------------------------------------------------------------------------
# run N S RATE TAG: a job of N workers, S shards; sets R_STATUS (ok, failed, timeout) and from
# the run summary R_STEP, R_SENT, R_RECV, R_RESENT, R_RESENT_ALL, R_P.
run() {
  local n=$1 s=$2 rate=$3 tag=$4 dir=$T/$1x$2 th
  R_STATUS=failed R_STEP=nan R_SENT=nan R_RECV=nan R_RESENT=nan R_RESENT_ALL=nan R_P=
  th=$(($(nproc) / n)); [ $th -ge 1 ] || th=1
  if [ ! -s "$dir/job.ini" ]; then
    mkdir -p "$dir"
    timeout 60 "$SER" bench cluster --model "$MODEL" --img "$IMG" --patch "$PATCH" \
      --shard-batch "$SB" --shards "$s" --workers "$n" --eq "$EQ" --threads "$th" \
      --write-job "$dir" > "$dir/write.log" 2>&1 || { cat "$dir/write.log" >&2; return; }
  fi
  shape "$rate"
  local log=$dir/coord-$tag.log ep= t0 pid i
  rm -f "$dir/ep"
  export OMP_WAIT_POLICY=PASSIVE
  # --workers: every worker in from the first step (the steps after it are the ones counted)
  ip netns exec "$NSC" timeout -k 5 "$RUN_TIMEOUT" "$SER" coordinator --config "$dir/job.ini" --workers "$n" \
    --batch-file "$dir/batch.safetensors" --steps "$STEPS" --lr 1e-4 --wd 0.1 --momentum 0.99 \
    --set "cluster.coordinator=$NET.2" --set cluster.port=0 --set cluster.plaintext=true \
    --set "cluster.heartbeat_ms=$HB" --set "cluster.timeout_ms=$TO" --set "cluster.reduce=$REDUCE" \
    --set "cluster.broadcast=$([ "$REDUCE" = chain ] && echo tree || echo coordinator)" \
    --set "run.out_dir=$dir/run-$tag" --endpoint-file "$dir/ep" --wait-workers-ms 60000 \
    > "$log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  t0=$SECONDS
  while [ -z "$ep" ] && [ $((SECONDS - t0)) -lt 60 ] && kill -0 "$pid" 2> /dev/null; do
    sleep 0.1
    [ -s "$dir/ep" ] && ep=$(head -1 "$dir/ep")
  done
  if [ -n "$ep" ]; then
    for i in $(seq 0 $((n - 1))); do
      # (chain: each worker binds its peer socket off the loopback, in plaintext here)
      SER_PLAINTEXT=1 ip netns exec "$NSW" timeout -k 5 "$RUN_TIMEOUT" "$SER" worker --coordinator "$ep" \
        --batch-file "$dir/batch.safetensors" --name "w$i" > "$dir/w$i-$tag.log" 2>&1 &
      PIDS+=("$!")
    done
    while kill -0 "$pid" 2> /dev/null && [ $((SECONDS - t0)) -lt "$RUN_TIMEOUT" ]; do sleep 0.2; done
  fi
  if kill -0 "$pid" 2> /dev/null || [ $((SECONDS - t0)) -ge "$RUN_TIMEOUT" ]; then
    R_STATUS=timeout
  else
    wait "$pid" && R_STATUS=ok
  fi
  stop_all
  rm -f "$dir/run-$tag"/ckpt-*  # the end's checkpoint (hundreds of MB), not needed here
  local sum
  sum=$(grep -o 'run summary: .*bytes/step sent.*' "$log" | tail -1)
  if [ "$R_STATUS" = ok ] && [ -n "$sum" ]; then
    read -r R_STEP R_SENT R_RECV R_RESENT R_RESENT_ALL R_P < <(echo "$sum" | sed -E \
      's/.*median ([0-9.]+) s\/step.*, ([0-9]+) bytes\/step sent, ([0-9]+) bytes\/step received.*, ([0-9]+) PARAMS resent after the first step \(([0-9]+) in all\), P = ([0-9]+).*/\1 \2 \3 \4 \5 \6/')
  elif [ "$R_STATUS" = ok ]; then
    R_STATUS=failed
  fi
  [ "$R_STATUS" = ok ] || echo "bench_link.sh: $n workers x $s shards at $rate: $R_STATUS; the coordinator's log ends:" >&2
  [ "$R_STATUS" = ok ] || tail -5 "$log" >&2
}

# T: the tokens of the equivariant views in the batch file (both views of every sample).
eq_tokens() {
  local f=$1 n
  n=$(od -An -t u8 -N8 "$f" | tr -d ' ')
  head -c $((8 + n)) "$f" | tail -c "$n" | grep -o '"eq\.view[01]\.[0-9]*":{[^}]*}' |
    sed -E 's/.*"shape":\[3,([0-9]+),([0-9]+)\].*/\1 \2/' |
    awk -v p="$PATCH" '{ t += ($1 / p) * ($2 / p) } END { print t + 0 }'
}

H=1.0456  # 1514 / 1448: what tbf counts per byte of TCP payload at MTU 1500
fails=0
rows=()
for p in $POINTS; do
  n=${p%x*} s=${p#*x}
  run "$n" "$s" none unshaped
  [ "$R_STATUS" = ok ] || fails=$((fails + 1))
  t_un=$R_STEP
  for rate in none $RATES; do
    if [ "$rate" != none ]; then
      run "$n" "$s" "$rate" "$rate"
      [ "$R_STATUS" = ok ] || fails=$((fails + 1))
    fi
    B=$((SB * s))
    tok=$(eq_tokens "$T/${n}x$s/batch.safetensors" 2> /dev/null || echo 0)
    bps=0; [ "$rate" = none ] || bps=$(rate_bps "$rate")
    rows+=("$(awk -v n="$n" -v s="$s" -v rate="$rate" -v bps="$bps" -v st="$R_STATUS" \
      -v step="$R_STEP" -v un="$t_un" -v sent="$R_SENT" -v recv="$R_RECV" -v P="${R_P:-0}" \
      -v C=$C -v B=$B -v T="$tok" -v h=$H -v re="$R_RESENT" -v rea="$R_RESENT_ALL" -v hb="$HB" \
      -v json=$JSON -v chain=$([ "$REDUCE" = chain ] && echo 1 || echo 0) 'BEGIN {
        msent = 4 * P * (chain ? 1 : n) + 4 * C * (2 * B + T); mrecv = 4 * P * (chain ? 1 : s) + 4 * C * (4 * B + 2 * T)
        model = msent + mrecv; ok = st == "ok" && P > 0
        link = bps > 0 ? h * model * 8 / bps : 0
        pall = bps > 0 ? h * 4 * P * (chain ? 1 : n) * 8 / bps : 0
        mt = un + link
        if (json) {
          printf "{\"n\":%d,\"s\":%d,\"rate\":\"%s\",\"rate_bps\":%d,\"status\":\"%s\"", n, s, rate, bps, st
          if (ok) printf ",\"P\":%d,\"sent\":%d,\"recv\":%d,\"model_sent\":%d,\"model_recv\":%d," \
            "\"bytes_ratio\":%.5f,\"step_s\":%.4f,\"unshaped_s\":%.4f,\"model_s\":%.4f," \
            "\"time_ratio\":%.4f,\"params_to_all_s\":%.4f,\"heartbeats3_s\":%.3f," \
            "\"resent\":%d,\"resent_all\":%d", P, sent, recv, msent, mrecv, (sent + recv) / model,
            step, un, mt, step / mt, pall, 3 * hb / 1000, re, rea
          printf "}"
        } else if (ok) {
          printf "%3d %3d  %-7s %8.2f %8.2f %9.2f %6.3f %8.3f %8.3f %8.3f %6.3f %9.2f %6d", n, s, rate,
            sent / 1e6, recv / 1e6, model / 1e6, (sent + recv) / model, step, un, mt, step / mt,
            pall, re
        } else {
          printf "%3d %3d  %-7s  %s", n, s, rate, st
        }
      }')")
    [ "$JSON" = 1 ] && echo "${rows[-1]}"
  done
done
if [ "$JSON" = 0 ]; then
  P=$R_P
  echo "bench_link: chains: $([ "$REDUCE" = chain ] && echo on || echo off), moco+ser $MODEL/$PATCH img $IMG, $SB images per shard ($EQ equivariant per step), $STEPS steps a run (median after the first), P = ${P:-?}, heartbeat $HB ms, h = $H"
  echo "  N   S  rate     sent MB  recv MB  model MB  bytes   step s unshaped  model s   time P->all s resent"
  for r in "${rows[@]}"; do echo "$r"; done
  echo "  model: bytes = $([ "$REDUCE" = chain ] && echo "2 x 4P" || echo "4P(N+S)") + 4C(6B+3T); time = unshaped + h * bytes * 8 / rate (MB = 1e6 bytes)"
fi
[ "$fails" = 0 ] || exit 1
exit 0
