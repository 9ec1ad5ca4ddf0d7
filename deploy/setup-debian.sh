#!/usr/bin/env bash
# Installs every build, test and run dependency of ser from Debian packages (Debian 12).
# Idempotent: packages already present are skipped quickly. Needs root (or sudo).
set -euo pipefail

PKGS=(
  build-essential cmake pkg-config git
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
  libopenblas-dev libopenblas-openmp-dev libdnnl-dev
  libturbojpeg0-dev libjpeg62-turbo-dev
  libuv1-dev libhttp-parser-dev libcjson-dev libinih-dev zlib1g-dev libpng-dev libxxhash-dev
  libcmocka-dev iproute2
  dataset-fashion-mnist
)
# Only for the experiments' learning-curve plots (experiments/plot_knn.sh).
PLOT_PKGS=(gnuplot-nox)
# Only for the status-page test in a real browser (ctest status_page; skipped without it).
BROWSER_PKGS=(chromium)
# Only needed to regenerate fixtures and run the PyTorch peer benchmarks.
PY_PKGS=(python3 python3-numpy python3-torch python3-torchvision python3-pil)

want=("${PKGS[@]}")
if [ "${SER_WITH_TORCH:-0}" = 1 ]; then want+=("${PY_PKGS[@]}"); fi
if [ "${SER_WITH_PLOTS:-0}" = 1 ]; then want+=("${PLOT_PKGS[@]}"); fi
if [ "${SER_WITH_BROWSER:-0}" = 1 ]; then want+=("${BROWSER_PKGS[@]}"); fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#want[@]} Debian packages present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
