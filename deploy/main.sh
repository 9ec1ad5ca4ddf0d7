#!/usr/bin/env bash
# The README's main-job command: installs dependencies, builds, and trains MoCo-v3 + SER on
# Fashion-MNIST (Debian's dataset-fashion-mnist) with the whole distributed system on this
# machine: `ser local` starts a coordinator, 2 workers and a data loader. Progress lines and
# the status URL are printed; the final state and checkpoints land in a fresh folder.
# Override the length with SER_DEMO_STEPS (default 40).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup-debian.sh
bash deploy/build.sh
out=$(mktemp -d /tmp/ser-demo.XXXXXX)
steps=${SER_DEMO_STEPS:-40}
echo "== ser local: MoCo-v3 + SER, ViT-Ti/4 on Fashion-MNIST, $steps steps of 64 images (4 equivariant)"
./build/ser local --config configs/moco_vitt4_fashion.ini --workers 2 --steps "$steps" \
  --set data.global_batch=64 --set ser.ratio=0.0625 --set run.out_dir="$out" --set run.log_every=5 \
  --set run.checkpoint_every=20 --set cluster.status_port=0 \
  --lr 1e-3 --wd 0.1 --momentum 0.99 --out "$out/final.safetensors"
echo "== done: final state $out/final.safetensors, checkpoints in $out"
echo "   (resume: run the same ser local command with --set run.out_dir=$out)"
