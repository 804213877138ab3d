#!/usr/bin/env python3
"""Writes llama.cpp's greedy answers and tokens on a GGUF file, as the references in tests/data.

llama.cpp is a measuring tool here, never a dependency: build its server from the
llama-cpp-python sdist (README, "Compare with llama.cpp"), then

    python3 scripts/llamacpp-reference.py --server BIN/llama-server --model FILE.gguf \\
        --prompts tests/data/smollm2_rope_freqs_llamacpp_greedy.json \\
        --greedy tests/data/NAME_llamacpp_greedy.json \\
        --texts tests/data/smollm2_llamacpp_tokens.json --tokens tests/data/NAME_llamacpp_tokens.json

--prompts names a reference whose `prompt` and `prompt_ids` are reused (the ids go to the server
as they are, so the file's own tokenizer and template do not matter), each answered greedily up
to as many tokens as that reference's answer has, stopping at end of sequence; a case without
`prompt_ids` is tokenized by the server (BOS added, special tokens parsed) and answered up to its
`n_predict` tokens. Each answer keeps the top two probabilities of every step, to show the margin
where two implementations part. --texts names one whose `text`s are tokenized (special tokens
parsed, no BOS added). Standard library only.
"""
import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

PORT = 18433


def post(path, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts")
    parser.add_argument("--greedy")
    parser.add_argument("--texts")
    parser.add_argument("--tokens")
    args = parser.parse_args()
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.dirname(os.path.abspath(args.server)))
    server = subprocess.Popen(
        [args.server, "-m", args.model, "--port", str(PORT), "-t", str(os.cpu_count()), "-c", "2048", "-np", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("llama-server exited; run it by hand to see why")
                time.sleep(0.5)
        if args.prompts and args.greedy:
            cases = []
            for case in json.load(open(args.prompts)):
                if "prompt_ids" in case:
                    ids, n = case["prompt_ids"], len(case["ids"])
                else:
                    body = {"content": case["prompt"], "add_special": True, "parse_special": True}
                    ids, n = post("/tokenize", body)["tokens"], case["n_predict"]
                body = {"prompt": ids, "n_predict": n, "temperature": 0, "top_k": 1, "cache_prompt": False,
                        "return_tokens": True, "n_probs": 2, "post_sampling_probs": False}
                answer = post("/completion", body)
                top2 = [[round(p["logprob"], 4) for p in step["top_logprobs"]]
                        for step in answer.get("completion_probabilities", [])]
                kept = {"prompt": case["prompt"], "prompt_ids": ids, "ids": answer["tokens"]}
                # The server joins the steps of a character spelled over several tokens into one
                # entry: then the list no longer lines up with the tokens, and is left out.
                if len(top2) == len(answer["tokens"]):
                    kept["top2_logprobs"] = top2
                cases.append(kept)
            json.dump(cases, open(args.greedy, "w"))
        if args.texts and args.tokens:
            cases = []
            for case in json.load(open(args.texts)):
                body = {"content": case["text"], "add_special": False, "parse_special": True}
                cases.append({"text": case["text"], "ids": post("/tokenize", body)["tokens"]})
            json.dump(cases, open(args.tokens, "w"), ensure_ascii=False)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
