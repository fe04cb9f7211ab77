#!/usr/bin/env bash
# Downloads wheels for the device tool's GPU machine (Python 3.12, manylinux x86-64, no
# package index there) into DEST, without their dependencies: the one download loop that
# scripts/gpu_wheels.sh and scripts/gpu_realmodels_carry.sh share.
#
#   bash scripts/gpu_download_wheels.sh DEST REQUIREMENT...
set -euo pipefail
dest=$1
shift
mkdir -p "$dest"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for wheel in "$@"; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$dest" "$wheel"
done
