#!/usr/bin/env bash
# Build the chatspace Apptainer image from Apptainer.def with pinned versions.
#   containers/build.sh [OUT.sif]      (default: chatspace-<version>.sif)
# Override a pin with e.g. CUDA_IMAGE_TAG=12.4.1-cudnn-runtime-ubuntu22.04 containers/build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)
OUT=${1:-chatspace-$VERSION.sif}
command -v apptainer >/dev/null || { echo "apptainer is not on PATH" >&2; exit 2; }
args=(
    --build-arg "UV_VERSION=${UV_VERSION:-0.13.9}"
    --build-arg "PYTHON_VERSION=${PYTHON_VERSION:-3.11.7}"
    --build-arg "CUDA_IMAGE_TAG=${CUDA_IMAGE_TAG:-12.8.1-cudnn-runtime-ubuntu22.04}"
    --build-arg "VERSION=$VERSION"
    --build-arg "GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)"
)
exec apptainer build "${args[@]}" "$OUT" Apptainer.def
