#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds, and runs the main job.
# Until the training demo lands, the main job is the ViT forward/backward benchmark on a
# small model (ViT-Ti/4 on 32-px images), which also checks the build end to end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
bash deploy/build.sh
./build/ser bench vit --model vit_tiny --img 32 --patch 4 --batch 64 --threads "$(nproc)" --runs 3
