#!/usr/bin/env bash
# Installs tessera's build and test dependencies from Debian's packages, only those missing.
# Safe to run again; needs root (or sudo) the first time on a fresh machine.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libspdlog-dev libfmt-dev nlohmann-json3-dev libcli11-dev
  libgtest-dev libdnnl-dev
  ocl-icd-opencl-dev         # Debian's oneDNN CMake config requires OpenCL (only "recommended")
  clang libclang-rt-14-dev libomp-14-dev  # scripts/fuzz.sh: libFuzzer, and OpenMP for clang
  libopenmpi-dev openmpi-bin
  liburing-dev               # io_uring for offload's swap files (memory/offload/async_io)
  procps
  python3                    # tests/multirank: reads saved safetensors and traces (stdlib only)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install_deps: installing ${missing[*]}"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
