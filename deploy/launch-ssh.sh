#!/usr/bin/env bash
# Launches a ser job across machines over ssh (each host needs the same ser build at $SER_BIN,
# the job file at the same path and, for CURVE, the key file its cluster.curve_key names, made
# once with `ser keygen job.key`; nothing else is copied). Without a key the processes refuse
# plaintext off the loopback unless the job sets cluster.plaintext = true.
#
#   deploy/launch-ssh.sh start HOSTS_FILE JOB_INI [-- extra coordinator options]
#   deploy/launch-ssh.sh stop  HOSTS_FILE
#   deploy/launch-ssh.sh status HOSTS_FILE
#
# HOSTS_FILE lines: "ROLE HOST [COUNT]" with ROLE coordinator (exactly one), loader or worker
# (COUNT processes on that host, default 1); '#' starts a comment. Example:
#   coordinator  gpu-a
#   loader       io-1      1
#   worker       gpu-b     2
#   worker       gpu-c     2
# Ports: cluster.port (control, default 5555) on the coordinator, 5556+i for loader i on its
# host; the status page stays on the coordinator's 127.0.0.1:cluster.status_port (ssh -L to
# see it). Processes write logs to $SER_LOG_DIR (default /tmp/ser-<job name>) on each host and
# are stopped by pid. A restarted coordinator resumes from the newest valid checkpoint in
# run.out_dir and the workers reconnect by themselves.
set -euo pipefail
SER_BIN=${SER_BIN:-ser}
cmd=${1:-}; hosts=${2:-}
[ -n "$cmd" ] && [ -f "$hosts" ] || { sed -n '2,20p' "$0"; exit 2; }
job=${3:-}
name=$( [ -n "$job" ] && sed -n 's/^name *= *//p' "$job" | head -1 || true); name=${name:-ser}
logdir=${SER_LOG_DIR:-/tmp/ser-$name}
port=$( [ -n "$job" ] && sed -n 's/^port *= *//p' "$job" | head -1 || true); port=${port:-5555}
# Workers have no job file: the key reaches them through the environment.
key=$( [ -n "$job" ] && sed -n 's/^curve_key *= *//p' "$job" | head -1 || true)
wenv=${key:+env SER_CURVE_KEY=$key}

roles() { grep -v '^\s*#' "$hosts" | awk 'NF>=2 {print $1, $2, (NF>=3?$3:1)}'; }
coord=$(roles | awk '$1=="coordinator"{print $2}')
[ "$(roles | awk '$1=="coordinator"' | wc -l)" = 1 ] || { echo "need exactly one coordinator line" >&2; exit 2; }

start_remote() {  # host logname command...
  local host=$1 log=$2; shift 2
  ssh -o BatchMode=yes "$host" "mkdir -p '$logdir' && nohup $* > '$logdir/$log.log' 2>&1 & echo \$! > '$logdir/$log.pid'"
}

case "$cmd" in
start)
  [ -f "$job" ] || { echo "job file missing" >&2; exit 2; }
  shift 3; [ "${1:-}" = "--" ] && shift
  start_remote "$coord" coordinator "$SER_BIN" coordinator --config "$job" \
    --set cluster.coordinator=0.0.0.0 "$@"
  loaders=""; i=0
  while read -r role host count; do
    [ "$role" = loader ] || continue
    for _ in $(seq "$count"); do
      start_remote "$host" "loader$i" "$SER_BIN" dataloader --config "$job" --bind "tcp://0.0.0.0:$((5556 + i))"
      loaders="${loaders:+$loaders,}tcp://$host:$((5556 + i))"; i=$((i + 1))
    done
  done < <(roles)
  [ -n "$loaders" ] || { echo "need at least one loader line" >&2; exit 2; }
  n=0
  while read -r role host count; do
    [ "$role" = worker ] || continue
    for _ in $(seq "$count"); do
      start_remote "$host" "worker$n" $wenv "$SER_BIN" worker --coordinator "tcp://$coord:$port" \
        --loader "$loaders" --name "$host-w$n"; n=$((n + 1))
    done
  done < <(roles)
  echo "started: coordinator on $coord:$port, loaders $loaders, $n workers; logs in $logdir"
  ;;
stop)
  while read -r role host count; do
    ssh -o BatchMode=yes "$host" "for p in '$logdir'/*.pid; do [ -f \"\$p\" ] && kill \$(cat \"\$p\") 2>/dev/null; rm -f \"\$p\"; done" || true
  done < <(roles)
  ;;
status)
  ssh -o BatchMode=yes "$coord" "$SER_BIN status 127.0.0.1:${SER_STATUS_PORT:-8080}"
  ;;
*) sed -n '2,20p' "$0"; exit 2 ;;
esac
