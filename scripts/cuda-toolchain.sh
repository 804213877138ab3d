#!/usr/bin/env bash
# Assemble a CUDA 13.0 build toolchain from NVIDIA's PyPI wheels, for machines
# without a system CUDA toolkit, so that `cargo build --release --features cuda`
# works there.
#
#   scripts/cuda-toolchain.sh            # install into .cuda-venv (once) and print exports
#   eval "$(scripts/cuda-toolchain.sh)"  # install, then export into this shell
#
# CUDA 13.0 is what the 580-series drivers run; the PTX nvcc emits here is
# JIT-compiled by any newer driver too. CUDA_COMPUTE_CAP defaults to 90
# (H100/H200); set it beforehand for other GPUs (80 for A100, 89 for L4/L40S).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${CUDA_VENV:-$root/.cuda-venv}"
cuda_version="${CUDA_WHEEL_VERSION:-13.0}"

if [[ ! -x "$venv/bin/python" ]]; then
  echo "cuda-toolchain: installing CUDA $cuda_version wheels into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-cuda-nvcc~=$cuda_version.0" \
    "nvidia-cuda-crt~=$cuda_version.0" \
    "nvidia-cuda-runtime~=$cuda_version.0" \
    "nvidia-cuda-cccl~=$cuda_version.0" \
    "nvidia-cuda-nvrtc~=$cuda_version.0" \
    "nvidia-nvvm~=$cuda_version.0" \
    "nvidia-cublas~=$cuda_version.0" \
    "nvidia-curand~=10.4.0" >&2
fi

# The wheels unpack side by side under site-packages/nvidia/cu13; that tree has
# the bin/ include/ lib/ layout of a toolkit, so it serves as CUDA_ROOT.
cuda_root="$("$venv/bin/python" - <<'PY'
import pathlib, nvidia
roots = [p for base in nvidia.__path__ for p in pathlib.Path(base).glob("cu*") if (p / "bin" / "nvcc").exists()]
print(roots[0] if roots else "")
PY
)"
if [[ -z "$cuda_root" ]]; then
  echo "cuda-toolchain: no nvcc found under $venv (did the wheels install?)" >&2
  exit 1
fi

lib="$cuda_root/lib"
# cudarc links against the driver (libcuda) and the libraries by their plain
# .so names; the wheels ship only versioned names and no driver. The driver
# stub lets the linker resolve libcuda.so without a GPU; the real libcuda.so.1
# comes from the NVIDIA driver on the machine that runs the binary.
stubs="$venv/cuda-stubs"
mkdir -p "$stubs"
for name in cublas cublasLt curand nvrtc cudart; do
  found="$(ls "$lib"/lib$name.so.* 2>/dev/null | head -n1 || true)"
  [[ -n "$found" ]] && ln -sf "$found" "$stubs/lib$name.so"
done
if [[ ! -e "$stubs/libcuda.so" ]]; then
  if [[ -e "$lib/stubs/libcuda.so" ]]; then
    ln -sf "$lib/stubs/libcuda.so" "$stubs/libcuda.so"
  else
    CUDA_ROOT="$cuda_root" "$root/scripts/cuda-driver-stub.sh" "$stubs" >&2
  fi
fi

echo "export CUDA_ROOT='$cuda_root'"
echo "export CUDA_PATH='$cuda_root'"
echo "export PATH='$cuda_root/bin':\"\$PATH\""
echo "export LIBRARY_PATH='$stubs':'$lib'\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
echo "export CUDA_STUBS='$stubs'"
echo "export CUDA_COMPUTE_CAP='${CUDA_COMPUTE_CAP:-90}'"
