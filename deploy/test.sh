#!/usr/bin/env bash
# The README's test command: installs dependencies, builds with fatal warnings, runs ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
bash deploy/build.sh -DSER_FATAL_WARNINGS=ON
ctest --test-dir build --output-on-failure -j"$(nproc)" "$@"
