#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds, trains MoCo-v3 + SER on
# Fashion-MNIST (Debian's dataset-fashion-mnist; or `--data DIR`, e.g. CIFAR-10) with the whole
# distributed system on this machine (`ser local`: a coordinator, 2 workers and a data
# loader), then prints the kNN accuracy of the trained network next to the randomly
# initialised one. Progress lines and the status URL are printed; checkpoints, step logs and
# evaluation JSON land in a fresh folder. The run itself is deploy/demo.sh (options there;
# SER_DEMO_STEPS sets the length, default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
bash deploy/build.sh
bash deploy/demo.sh "$@"
