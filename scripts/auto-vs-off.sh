#!/usr/bin/env bash
# `auto` against `off` under load, in one run: for each server below, `bench serve --mode
# off,auto --repeat 3` at 1, 4, 16 and 64 streaming clients (greedy chat answers), printing each
# mode's median tokens/s and auto's ratio to off.
#   scripts/auto-vs-off.sh [SMOLLM2.gguf]
# Servers: SmolLM2 with the shipped module (two questions: one its module agrees with often,
# one rarely), SmolLM2 with a random module (auto must notice and stop drafting), and the
# embedded model with its trained module.
set -euo pipefail
cd "$(dirname "$0")/.."
smollm2=${1:-../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf}
cargo build --release --quiet
ours=target/release/recyclegpt
port=18432

run() { # name, question, tokens, then the server's extra flags
  local name=$1 question=$2 tokens=$3
  shift 3
  "$ours" serve --port "$port" --max-running-sequences 64 "$@" > "/tmp/auto-vs-off-$port.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 240); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    sleep 0.5
  done
  for clients in ${CLIENTS:-1 4 16 64}; do
    echo "== $name, $clients clients: \"$question\""
    "$ours" bench serve --url "http://127.0.0.1:$port" --clients "$clients" --requests $((clients * 2)) \
      --mode off,auto --repeat 3 --max-tokens "$tokens" --chat --prompt "$question" 2>/dev/null | grep '^median'
  done
  kill "$pid"
  wait "$pid" 2> /dev/null || true
}

module=models/smollm2-135m-instruct-recycle
run "SmolLM2 + module" "Explain photosynthesis in simple words." 96 --model "$smollm2" --recycle "$module"
run "SmolLM2 + module" "Give me three tips for sleeping better." 96 --model "$smollm2" --recycle "$module"
run "SmolLM2 + random module" "Explain photosynthesis in simple words." 96 --model "$smollm2" --recycle-init random
run "embedded model" "Speak of love" 64 --model models/shakespeare
