#!/usr/bin/env bash
# Builds a link-time stand-in for the NVIDIA driver library (libcuda.so) from cuda.h:
# every driver entry point as an empty function, with the soname libcuda.so.1.
# cudarc links the driver by name, and the PyPI wheels ship the toolkit but not the
# driver. The binary never runs against this stub: at run time the loader finds
# the real libcuda.so.1 that the NVIDIA driver installs.
#
#   scripts/cuda-driver-stub.sh OUT_DIR   (needs CUDA_ROOT, or nvcc on PATH)
set -euo pipefail
out="${1:?usage: cuda-driver-stub.sh OUT_DIR}"
cuda_root="${CUDA_ROOT:-$(dirname "$(dirname "$(command -v nvcc)")")}"
header="$cuda_root/include/cuda.h"
[[ -f "$header" ]] || { echo "cuda-driver-stub: $header not found" >&2; exit 1; }
mkdir -p "$out"
# Preprocessing applies cuda.h's `#define cuX cuX_v2` renames, so the stub exports
# the versioned symbols that the bindings call.
gcc -E -P -I"$cuda_root/include" "$header" \
  | tr '\n' ' ' | tr ';' '\n' \
  | grep -oE '^\s*(extern\s+)?CUresult\s+[A-Za-z_][A-Za-z0-9_]*\s*\(' \
  | sed -E 's/.*CUresult\s+([A-Za-z0-9_]+).*/\1/' | sort -u \
  | awk '{ printf "int %s(void) { return 999; }\n", $1 }' > "$out/libcuda-stub.c"
count=$(wc -l < "$out/libcuda-stub.c")
[[ "$count" -gt 100 ]] || { echo "cuda-driver-stub: only $count entry points found in $header" >&2; exit 1; }
gcc -shared -fPIC -w -Wl,-soname,libcuda.so.1 -o "$out/libcuda.so" "$out/libcuda-stub.c"
echo "cuda-driver-stub: $out/libcuda.so with $count driver entry points" >&2
