#!/usr/bin/env bash
# Download the wheels that bench/gpu_check.sh needs on a GPU machine without a package registry
# (one that has torch, torchvision, tensorboard, pyyaml and tqdm but not kornia or faiss) into
# .whl/, for Python 3.12 on x86-64 Linux. Run where pip reaches PyPI; carry .whl/ along.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${PYV:-3.12}
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl kornia kornia_rs faiss-cpu
ls -la .whl
