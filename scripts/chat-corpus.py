#!/usr/bin/env python3
"""Writes a chat corpus that a model generates about itself, for `train-recycle --data`.

The model writes the user questions as well as the answers: a served model is asked for a
question on a topic (sampled), then answers it (mostly greedy, as chat is served), and each
conversation is written in the model's chat format (ChatML, SmolLM2's default system prompt).
Beside questions on topics, a share of the conversations ask for code, for arithmetic or for
lists, and some go on for a second or third turn with a follow-up in the context of the first,
as users chat. Only this script ships; the data it writes stays out of the repository.

    python3 scripts/chat-corpus.py --binary target/release/recyclegpt \
        --model ../shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf \
        --count 20000 --out /tmp/chat-corpus.txt

Run it again with the same arguments to resume: conversations are written in seed order, so
the ones already in --out are counted and skipped, and the rest are appended.

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


# Programming tasks (a share of questions ask for code).
CODE = [
    "reverses a string", "checks whether a number is prime", "counts the vowels in a sentence",
    "returns the largest number in a list", "sorts a list of names alphabetically",
    "computes the factorial of n", "removes duplicates from a list", "converts Celsius to Fahrenheit",
    "checks whether a word is a palindrome", "sums the even numbers in a list",
    "returns the n-th Fibonacci number", "counts how often each word appears in a text",
    "merges two sorted lists", "finds the average of a list of numbers", "reads a file line by line",
]
CODE_ASKS = [
    "Write a Python function that {c}.",
    "How do I write a function in Python that {c}?",
    "Write a JavaScript function that {c}.",
    "Can you show me code that {c}, with a short explanation?",
]

# Follow-ups that continue a conversation in its context.
FOLLOW_UPS = [
    "Can you give me an example?", "Can you explain that more simply?", "Why is that?",
    "Can you summarize that in one sentence?", "What else should I know?", "Thanks! Can you make it shorter?",
    "Can you put that in a list?", "What is a common mistake people make with this?",
]


def arithmetic(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return rng.choice([
        f"What is {a} + {b}?", f"What is {a} times {b}?", f"What is {a * b} divided by {b}?",
        f"If I have {a + b} apples and give away {b}, how many are left?",
        f"What is {a}% of {b * 10}?", f"Is {a * b + 1} a prime number?",
    ])


def post(base, path, body, timeout=600):
    request = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def chat(base, messages, temperature, max_tokens, seed):
    body = {
        "model": MODEL[0],
        "messages": messages,
        "temperature": temperature,
        "top_p": 0.95,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    return post(base, "/v1/chat/completions", body)["choices"][0]["message"]["content"]


def question(base, rng, rng_seed):
    kind = rng.random()
    if kind < 0.12:
        return rng.choice(CODE_ASKS).format(c=rng.choice(CODE))
    if kind < 0.22:
        return arithmetic(rng)
    topic = rng.choice(TOPICS.split(", ")).strip()
    if kind < 0.6:
        return rng.choice(INSTRUCTIONS).format(t=topic)
    asked = [{"role": "user", "content": rng.choice(ASKS).format(t=topic)}]
    line = chat(base, asked, 0.8, 48, rng_seed).strip().split("\n")[0].strip().strip('"')
    return line if len(line) > 8 else f"Tell me about {topic}."


def conversation(base, seed, max_turns):
    """One conversation in ChatML: a question, its answer, and with some chance follow-ups."""
    rng = random.Random(seed)
    temperature = 0.0 if seed % 10 < 7 else 0.7
    messages = [{"role": "user", "content": question(base, rng, seed)}]
    text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
    for turn in range(max_turns):
        if turn > 0:
            if rng.random() >= 0.4:
                break
            messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
        answer = chat(base, messages, temperature, 200, seed + turn)
        messages.append({"role": "assistant", "content": answer})
        text += f"<|im_start|>user\n{messages[-2]['content']}<|im_end|>\n<|im_start|>assistant\n{answer}<|im_end|>\n"
    return text


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


def written(path):
    """Conversations already in `path` (each starts with a system turn)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().count("<|im_start|>system\n")
    except FileNotFoundError:
        return 0


def progress(done, count, started, resumed):
    rate = (done - resumed) / max(time.time() - started, 1e-9)
    left = (count - done) / rate if rate > 0 else 0
    bar = "#" * (30 * done // max(count, 1))
    print(f"\r[{bar:<30}] {done}/{count} conversations, {rate:.1f}/s, {left / 60:.0f} min left ",
          end="", file=sys.stderr, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--count", type=int, default=1600)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--turns", type=int, default=3, help="most user turns per conversation")
    parser.add_argument("--port", type=int, default=8377)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    resumed = written(args.out)
    if resumed >= args.count:
        print(f"{args.out} already holds {resumed} conversations", file=sys.stderr)
        return
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
        started, done = time.time(), resumed
        seeds = [args.seed * 1_000_003 + i for i in range(resumed, args.count)]
        with open(args.out, "a", encoding="utf-8") as out, ThreadPoolExecutor(args.clients) as pool:
            # `map` yields in seed order, so the file is always a prefix of the run: resumable.
            for text in pool.map(lambda s: conversation(base, s, args.turns), seeds):
                out.write(text)
                out.flush()
                done += 1
                progress(done, args.count, started, resumed)
        print(file=sys.stderr)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
