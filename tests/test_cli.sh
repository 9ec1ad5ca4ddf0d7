#!/usr/bin/env bash
# test_cli.sh SER CLI_MD — the command-line conventions of every subcommand (docs/cli.md):
#   -h and --help print a usage to stdout, nothing to stderr, and exit 0;
#   an unknown option exits 2;
#   --opt=value is taken (one option of each command, seen in what the command then says);
#   --log-level rejects a level it does not know (exit 2);
#   a malformed --coordinator, --loader or --bind endpoint exits 2, naming it, before connecting;
#   every option a --help names is in CLI_MD (docs/cli.md);
#   deploy/demo.sh --method with no preset exits 2 before it does anything.
# Every command runs under `timeout`; nothing is left running. ctest: cli_conventions.
set -u
SER=${1:?usage: test_cli.sh path/to/ser docs/cli.md}
CLI_MD=${2:?usage: test_cli.sh path/to/ser docs/cli.md}
T=$(mktemp -d /tmp/ser_test_cli_XXXXXX)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# Runs `ser ARGS...` (10 s at most); sets rc and leaves its stdout/stderr in $T/out, $T/err.
run() {
  timeout -k 2 10 "$SER" "$@" > "$T/out" 2> "$T/err"
  rc=$?
}

# -h / --help everywhere, sub-benchmarks and eval modes included; also after other arguments.
while read -r args; do
  for h in -h --help; do
    run $args $h
    [ "$rc" = 0 ] || fail "ser $args $h: exit $rc"
    grep -q usage "$T/out" || fail "ser $args $h: no usage on stdout"
    [ -s "$T/err" ] && fail "ser $args $h: wrote to stderr: $(head -c 200 "$T/err")"
  done
  # Its options are documented (not those of other commands it quotes: `ser step --out`).
  for opt in $(sed 's/`[^`]*`//g' "$T/out" | grep -o -- '--[a-z][a-z0-9-]*' | sort -u); do
    grep -q -- "$opt" "$CLI_MD" || fail "ser $args --help names $opt, docs/cli.md does not"
  done
done <<'EOF'
local
coordinator
worker
dataloader
keygen
status
eval
export
step
bench
bench vit
bench step
bench loader
bench cluster
eval knn
keygen FILE
status 127.0.0.1:1
worker --name w0
EOF
run
[ "$rc" = 2 ] || fail "ser without a command: exit $rc, not 2"

# An unknown option: exit 2 (a usage error), for every command.
for cmd in local coordinator worker dataloader keygen status eval export step "bench vit" \
           "bench step" "bench loader" "bench cluster"; do
  run $cmd --no-such-option
  [ "$rc" = 2 ] || fail "ser $cmd --no-such-option: exit $rc, not 2"
  [ -s "$T/err" ] || fail "ser $cmd --no-such-option: no message on stderr"
done

# --opt=value: each command acts on the value (its message names it).
expect() {  # expect RC TEXT ARGS...: exit RC and TEXT on stderr
  local want=$1 text=$2
  shift 2
  run "$@"
  [ "$rc" = "$want" ] || fail "ser $*: exit $rc, not $want: $(head -c 300 "$T/err")"
  grep -qF -- "$text" "$T/err" || fail "ser $*: stderr lacks '$text': $(head -c 300 "$T/err")"
}
expect 2 "$T/nope.ini" local --config="$T/nope.ini"
expect 2 "$T/nope.ini" coordinator --config="$T/nope.ini"
expect 2 "$T/nope.ini" step --config="$T/nope.ini" --batch=x --out=y
expect 2 "'bad name'" worker --coordinator=tcp://127.0.0.1:1 --batch-file=x "--name=bad name"
expect 1 "$T/nodata" dataloader --data="$T/nodata" --idle-exit=1
expect 1 "$T/nodata" bench loader --data="$T/nodata"
expect 2 "vit_bogus" bench vit --model=vit_bogus
expect 1 "cannot connect" status 127.0.0.1:1 --timeout=0.5
expect 2 "--watch" status 127.0.0.1:1 --watch=abc
expect 1 "$T/nockpt" eval knn --checkpoint="$T/nockpt"
expect 2 "$T/nope.ini" export "$T/x" --out="$T/o.safetensors" --config="$T/nope.ini"
expect 2 "--quiet takes no value" dataloader --quiet=1 --data=x
# A malformed endpoint is a usage error (exit 2) naming it, before any connection is tried
# (a worker with a good --coordinator and a bad --loader used to connect, then fail or wait).
expect 2 "'tcp://host'" worker --coordinator=tcp://host --loader=tcp://127.0.0.1:1
expect 2 "'foo'" worker --coordinator foo --batch-file x
expect 2 "'tcp://127.0.0.1:99999'" worker --coordinator tcp://127.0.0.1:99999 --batch-file x
expect 2 "--loader: endpoint 'tcp://127.0.0.1'" worker --coordinator tcp://127.0.0.1:1 \
  --loader tcp://127.0.0.1:2,tcp://127.0.0.1
grep -q refused "$T/err" && fail "ser worker with a malformed --loader tried to connect"
expect 2 "--bind: endpoint 'foo'" dataloader --data "$T/nodata" --bind foo
expect 2 "'tcp://host'" dataloader --data="$T/nodata" --bind=tcp://host

# keygen has no option but --help: FILE, then never over it.
run keygen "$T/job.key"
[ "$rc" = 0 ] && [ -s "$T/job.key" ] && [ -s "$T/job.key.pub" ] || fail "ser keygen FILE: exit $rc"
expect 1 "File exists" keygen "$T/job.key"

# --log-level on the long-running commands: a level it does not know is a usage error.
for cmd in local coordinator worker dataloader; do
  expect 2 "loud" $cmd --log-level=loud
done

# OpenBLAS on a CPU model it does not know falls back to pre-AVX kernels: ser says so once,
# with the environment variable that fixes it (forced here with OPENBLAS_CORETYPE=Prescott; one
# thread: OpenBLAS's Prescott kernels on 2 threads took 10 s for this tiny step, 0.3 s on one).
if grep -qw avx2 /proc/cpuinfo; then
  OPENBLAS_CORETYPE=Prescott timeout -k 2 60 "$SER" bench step --model=vit_tiny --img=16 --patch=4 \
    --batch=2 --mlp-dim=16 --threads=1 --eq=0 --runs=1 > "$T/out" 2> "$T/err"
  rc=$?
  [ "$rc" = 0 ] && grep -q "OPENBLAS_CORETYPE=" "$T/err" && [ "$(grep -c OpenBLAS "$T/err")" = 1 ] ||
    fail "slow OpenBLAS kernels not reported once (exit $rc): $(head -c 300 "$T/err")"
else
  echo "skip: the OpenBLAS kernel warning needs an AVX2 CPU"
fi

# deploy/demo.sh refuses a method it has no preset for (exit 2, naming the choices) before it
# looks for data or makes a run folder.
before=$(ls -d /tmp/ser-demo.* 2> /dev/null | wc -l)
timeout -k 2 10 bash "$(dirname "$0")/../deploy/demo.sh" --method nope > "$T/out" 2> "$T/err"
rc=$?
after=$(ls -d /tmp/ser-demo.* 2> /dev/null | wc -l)
[ "$rc" = 2 ] && grep -q "moco, dino or barlow, not 'nope'" "$T/err" && [ "$before" = "$after" ] ||
  fail "deploy/demo.sh --method nope: exit $rc, run folders $before -> $after: $(head -c 200 "$T/err")"

if [ "$fails" -gt 0 ]; then
  echo "test_cli.sh: $fails failures"
  exit 1
fi
echo "test_cli.sh: all passed"
