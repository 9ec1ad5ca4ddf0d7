#!/usr/bin/env bash
# test_install.sh CMAKE BUILD_DIR SOURCE_DIR — `cmake --install BUILD_DIR --prefix P` into a
# temporary P puts every file docs/cli.md lists in place: the binary, the job presets, the
# documentation, the man page (roff made from the help texts), the bash completion and the
# systemd units (pointing at P's binary). ctest: cli_install.
set -u
CMAKE=${1:?usage: test_install.sh CMAKE BUILD_DIR SOURCE_DIR}
BUILD=${2:?}
SRC=${3:?}
P=$(mktemp -d /tmp/ser_test_install_XXXXXX)
trap 'rm -rf "$P"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

out=$(timeout -k 2 60 "$CMAKE" --install "$BUILD" --prefix "$P" 2>&1) ||
  { echo "$out"; echo "FAIL: cmake --install"; exit 1; }

[ -x "$P/bin/ser" ] || fail "bin/ser missing or not executable"
timeout -k 2 10 "$P/bin/ser" --version | grep -q "^ser " || fail "bin/ser --version"
for f in "$SRC"/configs/*.ini; do
  [ -s "$P/share/ser/configs/$(basename "$f")" ] || fail "share/ser/configs/$(basename "$f") missing"
done
for f in "$SRC"/docs/*.md; do
  [ -s "$P/share/doc/ser/$(basename "$f")" ] || fail "share/doc/ser/$(basename "$f") missing"
done
[ -s "$P/share/doc/ser/cli.md" ] || fail "share/doc/ser/cli.md missing"

man1=$P/share/man/man1/ser.1
[ -s "$man1" ] || fail "share/man/man1/ser.1 missing or empty"
grep -q '^\.TH SER 1' "$man1" || fail "ser.1 has no .TH line (not roff)"
for s in NAME SYNOPSIS DESCRIPTION COMMANDS '"EXIT STATUS"' ENVIRONMENT; do
  grep -q "^\.SH $s" "$man1" || fail "ser.1 has no section $s"
done
grep -q '^\.SS "ser coordinator"' "$man1" || fail "ser.1 has no ser coordinator"
if command -v groff > /dev/null; then  # renders without a warning
  out=$(groff -man -ww -z "$man1" 2>&1)
  [ -z "$out" ] || fail "groff warns about ser.1: $out"
fi

comp=$P/share/bash-completion/completions/ser
[ -s "$comp" ] || fail "share/bash-completion/completions/ser missing"
grep -q coordinator "$comp" || fail "the completion does not mention coordinator"
bash -n "$comp" || fail "the completion is not valid bash"
got=$(bash -c 'source "$1"; COMP_WORDS=(ser dataloader --idle); COMP_CWORD=2; _ser
               echo "${COMPREPLY[*]}"' _ "$comp")
[ "$got" = "--idle-exit" ] || fail "completing 'ser dataloader --idle' gave '$got'"

for u in ser-coordinator.service ser-dataloader.service ser-worker@.service; do
  f=$P/lib/systemd/system/$u
  [ -s "$f" ] || { fail "lib/systemd/system/$u missing"; continue; }
  grep -q "ExecStart=.*$P/bin/ser " "$f" || fail "$u: ExecStart does not run $P/bin/ser"
done

if [ "$fails" -gt 0 ]; then
  echo "test_install.sh: $fails failures"
  exit 1
fi
echo "test_install.sh: all passed"
