#!/usr/bin/env python3
"""Writes a chat corpus that a model generates about itself, for `train-recycle --data`.

The model writes the user questions as well as the answers: a served model is asked for a
question on a topic (sampled), then answers it (mostly greedy, as chat is served), and each
conversation is written in the model's chat format (ChatML, SmolLM2's default system prompt).
Only this script ships; the data it writes stays out of the repository.

    python3 scripts/chat-corpus.py --binary target/release/recyclegpt \
        --model ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
        --count 1600 --out /tmp/chat-corpus.txt

Standard library only: it drives the project's own server over HTTP with a thread pool, so
the server's continuous batching generates many conversations at once.
"""
import argparse
import json
import random
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

MODEL = ["?"]  # the served model's id, read from /v1/models at start
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Subjects a chat assistant is asked about; the model turns each into its own question.
TOPICS = """cooking pasta, baking bread, growing tomatoes, houseplants, dogs, cats, birds, the ocean,
volcanoes, earthquakes, the moon, the solar system, black holes, rainbows, clouds, weather, climate,
recycling, electricity, magnets, batteries, computers, the internet, programming in Python, sorting a
list, prime numbers, fractions, percentages, algebra, geometry, statistics, probability, chess,
football, running, swimming, sleep, drinking water, vitamins, the heart, the brain, bones, teeth,
colds, exercise, meditation, stress, friendship, writing an email, job interviews, saving money,
budgets, interest rates, taxes, renting a flat, moving house, cleaning, laundry, cars, bicycles,
trains, airplanes, travel to Japan, learning French, grammar, poetry, fairy tales, history of Rome,
ancient Egypt, the printing press, the industrial revolution, democracy, elections, music, the
piano, painting, photography, movies, video games, birthdays, holidays, gardening, bees, forests,
deserts, rivers, mountains, maps, time zones, calendars, clocks, photosynthesis, cells, DNA,
evolution, dinosaurs, fossils, chemistry, acids, metals, plastic, glass, light, sound, heat,
gravity, friction, simple machines, bridges, houses, robots, artificial intelligence, smartphones,
passwords, privacy, email etiquette, public speaking, time management, study tips, reading books,
libraries, coffee, tea, chocolate, fruit, vegetables, breakfast, soup, salads, rice, spices""".replace(
    "\n", " "
)

# How the question is asked for: the model writes the question itself.
ASKS = [
    "Write one question that a curious person might ask an AI assistant about {t}.",
    "Write a short question a student could ask about {t}.",
    "Write one practical how-to question about {t}.",
    "Write a question asking for an explanation of something about {t}.",
]

# Instructions built directly, so that answers of other shapes (lists, stories, steps) appear.
INSTRUCTIONS = [
    "Explain {t} in simple words.",
    "Give me three tips about {t}.",
    "Write a short story about {t}.",
    "List five facts about {t}.",
    "What are the pros and cons of {t}?",
    "Write a short poem about {t}.",
    "Summarize what people should know about {t} in a few sentences.",
    "How would you explain {t} to a child?",
]


def post(base, path, body, timeout=600):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def chat(base, content, temperature, max_tokens, seed):
    body = {
        "model": MODEL[0],
        "messages": [{"role": "user", "content": content}],
        "temperature": temperature,
        "top_p": 0.95,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    return post(base, "/v1/chat/completions", body)["choices"][0]["message"]["content"]


def question(base, rng_seed):
    rng = random.Random(rng_seed)
    topic = rng.choice(TOPICS.split(", ")).strip()
    if rng.random() < 0.5:
        return rng.choice(INSTRUCTIONS).format(t=topic)
    text = chat(base, rng.choice(ASKS).format(t=topic), 0.8, 48, rng_seed)
    line = text.strip().split("\n")[0].strip().strip('"')
    return line if len(line) > 8 else f"Tell me about {topic}."


def conversation(base, seed):
    q = question(base, seed)
    temperature = 0.0 if seed % 10 < 7 else 0.7
    a = chat(base, q, temperature, 200, seed)
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
        f"<|im_start|>assistant\n{a}<|im_end|>\n"
    )


def wait_ready(base, server):
    for _ in range(600):
        if server.poll() is not None:
            sys.exit("the server exited before it was ready")
        try:
            urllib.request.urlopen(base + "/health", timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit("the server did not become ready")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=1600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--port", type=int, default=8377)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    base = f"http://127.0.0.1:{args.port}"
    server = subprocess.Popen(
        [args.binary, "serve", "--model", args.model, "--port", str(args.port),
         "--max-running-sequences", str(args.clients), "--default-recycle", "off"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(base, server)
        with urllib.request.urlopen(base + "/v1/models") as response:
            MODEL[0] = json.loads(response.read())["data"][0]["id"]
        started, done = time.time(), 0
        seeds = [args.seed * 1_000_003 + i for i in range(args.count)]
        with open(args.out, "w", encoding="utf-8") as out, ThreadPoolExecutor(args.clients) as pool:
            for text in pool.map(lambda s: conversation(base, s), seeds):
                out.write(text)
                done += 1
                if done % 50 == 0 or done == args.count:
                    rate = done / (time.time() - started)
                    print(f"\r{done}/{args.count} conversations ({rate:.1f}/s)", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
