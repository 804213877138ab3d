#!/usr/bin/env bash
# Packs what a GPU machine without a Rust toolchain needs for scripts/gpu-check.sh into
# target/gpu-bundle/: the CUDA build, stripped and xz-compressed (73 MB of mostly embedded PTX
# becomes about 9 MB), and the stories260K test model.
#
#   scripts/build-cuda.sh && scripts/gpu-bundle.sh [STORIES260K_DIR]
# then, on the GPU machine, from the repository root:
#   xz -d target/gpu-bundle/recyclegpt.xz && chmod +x target/gpu-bundle/recyclegpt
#   scripts/gpu-check.sh target/gpu-bundle/recyclegpt target/gpu-bundle/stories260K OUT_DIR
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stories="${1:-$root/../shared/models/stories260K}"
bundle="$root/target/gpu-bundle"
[[ -x "$root/target/cuda/release/recyclegpt" ]] || { echo "gpu-bundle: run scripts/build-cuda.sh first" >&2; exit 1; }
[[ -f "$stories/hf/model.safetensors" ]] || { echo "gpu-bundle: no stories260K model at $stories" >&2; exit 1; }
rm -rf "$bundle"
mkdir -p "$bundle"
strip -o "$bundle/recyclegpt" "$root/target/cuda/release/recyclegpt"
xz -T0 -6 "$bundle/recyclegpt"
mkdir -p "$bundle/stories260K"
cp -r "$stories/hf" "$stories/reference" "$bundle/stories260K/"
du -sh "$bundle"/*
