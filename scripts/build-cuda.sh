#!/usr/bin/env bash
# Builds `recyclegpt` with the CUDA backend on a machine without a CUDA toolkit or GPU, then
# checks that the binary starts: with no usable GPU, `--device auto` falls back to the CPU and
# generates, and `--device cuda` fails with a clear error.
#
#   scripts/build-cuda.sh          # binary: target/cuda/release/recyclegpt
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
eval "$(scripts/cuda-toolchain.sh)"
cargo build --release --locked --features cuda --target-dir target/cuda --bin recyclegpt
bin=target/cuda/release/recyclegpt

# The binary links the driver (libcuda.so.1). Where no NVIDIA driver is installed, the link
# stub stands in for it: it answers every call with an error, as a driver without a GPU would.
libs="$CUDA_ROOT/lib"
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  fake_driver="$(mktemp -d)"
  ln -s "$CUDA_STUBS/libcuda.so" "$fake_driver/libcuda.so.1"
  libs="$fake_driver:$libs"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$bin" | grep 'not found'; then
  echo "build-cuda: libraries missing at run time" >&2
  exit 1
fi
text="$("$bin" generate --prompt "ROMEO:" --max-tokens 8 2>/dev/null)"
[[ "$text" == ROMEO:* ]] || { echo "build-cuda: the CUDA build did not generate on the CPU: $text" >&2; exit 1; }
if nvidia-smi > /dev/null 2>&1; then
  "$bin" generate --device cuda --prompt "ROMEO:" --max-tokens 8
else
  if message="$("$bin" generate --device cuda --prompt "ROMEO:" --max-tokens 8 2>&1)"; then
    echo "build-cuda: --device cuda succeeded without a GPU" >&2
    exit 1
  fi
  grep -q "CUDA device 0 is not usable" <<< "$message" || { echo "build-cuda: unclear error: $message" >&2; exit 1; }
fi
echo "build-cuda: $bin built ($(du -h "$bin" | cut -f1)); it falls back to the CPU without a GPU and refuses --device cuda clearly"
