#!/usr/bin/env bash
# recyclegpt beside llama.cpp on one GGUF file, in one run (same machine, same hour):
#   scripts/versus-llamacpp.sh LLAMA_CPP_BIN_DIR MODEL.gguf [QUANTIZE]
# LLAMA_CPP_BIN_DIR holds a CPU build's llama-bench, llama-batched-bench and llama-server (the
# README says how to build one; llama.cpp is a measuring tool here, never a dependency).
# QUANTIZE (default auto: the file's own Q4_0/Q4_1, else Q8_0) is recyclegpt's `--quantize`.
# Prints llama-bench (pp128, pp512, tg128), llama-batched-bench (1, 4, 16 sequences), our
# `bench decode`, then `bench serve` against both servers at 1, 4 and 16 streaming clients.
set -euo pipefail
bin=${1:?usage: $0 LLAMA_CPP_BIN_DIR MODEL.gguf [QUANTIZE]}
model=${2:?usage: $0 LLAMA_CPP_BIN_DIR MODEL.gguf [QUANTIZE]}
quantize=${3:-auto}
threads=$(nproc)
cd "$(dirname "$0")/.."
cargo build --release --quiet
ours=target/release/recyclegpt
export LD_LIBRARY_PATH="$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

echo "== llama.cpp: llama-bench, $threads threads =="
"$bin/llama-bench" -m "$model" -t "$threads" -p 128,512 -n 128 -r 3 2>/dev/null
echo "== llama.cpp: llama-batched-bench =="
"$bin/llama-batched-bench" -m "$model" -t "$threads" -c 4096 -npp 128 -ntg 128 -npl 1,4,16 2>/dev/null | grep '^|'
echo "== recyclegpt: bench decode --quantize $quantize =="
"$ours" bench decode --model "$model" --quantize "$quantize" --rounds 5 --batch 1,4,16 2>/dev/null

port=18431
serve_bench() { # name, then the server command
  local name=$1
  shift
  "$@" > "/tmp/versus-$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    sleep 0.5
  done
  for clients in 1 4 16; do
    echo "== $name: $clients streaming clients, 128 tokens each =="
    "$ours" bench serve --url "http://127.0.0.1:$port" --clients "$clients" --requests $((clients * 4)) \
      --mode off --max-tokens 128 2>/dev/null
  done
  kill "$pid"
  wait "$pid" 2> /dev/null || true
}
serve_bench llama-server "$bin/llama-server" -m "$model" -t "$threads" -np 16 -c 8192 --host 127.0.0.1 --port "$port"
serve_bench recyclegpt "$ours" serve --model "$model" --quantize "$quantize" --host 127.0.0.1 --port "$port"
