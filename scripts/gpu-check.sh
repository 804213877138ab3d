#!/usr/bin/env bash
# The GPU checks, run on a machine with an NVIDIA GPU and driver but no Rust toolchain:
# correctness first (greedy parity with llama2.c on stories260K, verify == auto == off, batched ==
# unbatched through the server), then `bench decode` on M3 and M4 in f16.
#
#   scripts/gpu-check.sh BINARY STORIES260K_DIR OUT_DIR
#
# BINARY is `recyclegpt` built with `--features cuda` (scripts/cuda-toolchain.sh, then
# `cargo build --release --features cuda`). It links libcublas.so.13, libcublasLt.so.13,
# libcurand.so.10 and libnvrtc.so.13: from a CUDA 13 toolkit, or from the nvidia-* CUDA 13
# wheels that PyTorch installs, which this script finds.
#
# GPU_CHECK_DEVICE=cpu and GPU_CHECK_SHAPES=M1 run the same checks on a CPU build (how the
# script itself is tested without a GPU).
set -euo pipefail
device="${GPU_CHECK_DEVICE:-cuda}"
shapes="${GPU_CHECK_SHAPES:-M3,M4}"
bin="${1:?usage: gpu-check.sh BINARY STORIES260K_DIR OUT_DIR}"
stories="${2:?stories260K directory}"
out="${3:?output directory}"
mkdir -p "$out"

wheel_libs="$(python3 - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for base in site.getsitepackages():
    for lib in glob.glob(os.path.join(base, "nvidia", "*", "lib")):
        dirs.add(lib)
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="${wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [[ "$device" != cpu ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
fi
if ldd "$bin" | grep "not found"; then
  echo "gpu-check: the libraries above are missing (LD_LIBRARY_PATH=$LD_LIBRARY_PATH)" >&2
  exit 1
fi

python3 - "$bin" "$stories" "$out" "$device" <<'PY'
import json, subprocess, sys, threading, time, urllib.request
binary, stories, out, device = sys.argv[1:5]
model = f"{stories}/hf"
results = {}

def generate(prompt, tokens, *extra):
    cmd = [binary, "generate", "--model", model, "--prompt", prompt, "--max-tokens", str(tokens),
           "--device", device, "--json", *extra]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

prompts = {"once_upon_a_time": "Once upon a time", "lily_tom_park": "Lily and Tom went to the park"}
for dtype in ["f32", "f16", "bf16"]:
    for name, prompt in prompts.items():
        reference = [int(t) for t in open(f"{stories}/reference/{name}.ids").read().split()]
        got = generate(prompt, 200, "--dtype", dtype)
        want = reference[len(got["prompt_ids"]) - 1:][:len(got["ids"])]
        same = next((i for i, (a, b) in enumerate(zip(got["ids"], want)) if a != b), len(want))
        results[f"parity_{dtype}_{name}"] = {"tokens": len(want), "equal_prefix": same,
                                             "tokens_per_second": got["tokens_per_second"]}
        print(f"parity {dtype} {name}: first {same} of {len(want)} tokens equal the reference")
        if dtype == "f32":
            assert same == len(want), f"f32 greedy on {device} must equal llama2.c"

for dtype in ["f32", "f16"]:
    for prompt in prompts.values():
        extra = ["--dtype", dtype, "--recycle-init", "random"]
        off = generate(prompt, 120, "--mode", "off", *extra)
        for mode in ["verify", "auto"]:
            got = generate(prompt, 120, "--mode", mode, *extra)
            assert got["ids"] == off["ids"], f"{mode} != off ({dtype}, {prompt!r})"
            results[f"{mode}_equals_off_{dtype}_{prompt}"] = True
print("verify == auto == off: ok")

server = subprocess.Popen([binary, "serve", "--model", model, "--device", device, "--dtype", "f32",
                           "--port", "8077", "--recycle-init", "random"], stderr=subprocess.DEVNULL)
try:
    for _ in range(120):
        try:
            urllib.request.urlopen("http://127.0.0.1:8077/health", timeout=1)
            break
        except Exception:
            time.sleep(0.5)
    def complete(prompt, mode):
        body = json.dumps({"prompt": prompt, "max_tokens": 80, "temperature": 0, "recycle": mode}).encode()
        request = urllib.request.Request("http://127.0.0.1:8077/v1/completions", body,
                                         {"Content-Type": "application/json"})
        return json.load(urllib.request.urlopen(request, timeout=120))["choices"][0]["text"]
    jobs = [(p, m) for p in ["Once upon a time", "The cat", "Lily and Tom", "One day"] for m in ["off", "verify", "auto"]]
    alone = {job: complete(*job) for job in jobs}
    together = {}
    threads = [threading.Thread(target=lambda j=job: together.__setitem__(j, complete(*j))) for job in jobs]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert together == alone, "batched output differs from unbatched"
    results["batched_equals_unbatched"] = len(jobs)
    print(f"batched == unbatched: ok ({len(jobs)} concurrent requests)")
finally:
    server.terminate()
    server.wait(timeout=60)
json.dump(results, open(f"{out}/correctness.json", "w"), indent=2)
PY

"$bin" bench decode --shape "$shapes" --device "$device" --dtype f16 --rounds 3 --batch 1,16,64 --json | tee "$out/bench-decode.jsonl"
echo "gpu-check: all checks passed; results in $out"
