#!/usr/bin/env python3
"""Drives a running recyclegpt server with the official `anthropic` Python client, unmodified:
`messages.create`, `messages.stream` (its events in order, the final message equal to the
deltas), `stop_sequences`, the `max_tokens` ending, forced tool use with an input that fits the
schema (whole and streamed as `input_json_delta`), a `tool_result` round trip, `count_tokens`,
and the error shapes the client raises. Prints one line per check and exits non-zero on a
failure. With MODE the requests ask for that decode mode (`recycle`, this server's extension).

    python3 -m venv /tmp/ant && /tmp/ant/bin/pip install anthropic
    /tmp/ant/bin/python scripts/anthropic-client-check.py http://127.0.0.1:8080 [MODE]
"""
import json
import sys

import anthropic

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
mode = sys.argv[2] if len(sys.argv) > 2 else "auto"
client = anthropic.Anthropic(base_url=base, api_key="unused")
model = "claude-sonnet-4-5"
# Greedy, so that the checks that compare two answers are deterministic. Recent clients no longer
# take `temperature` as an argument; the API still reads it from the body.
extra = {"recycle": mode, "temperature": 0}
failures = []

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city now",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def check(name, fn):
    try:
        print(f"ok   {name}: {fn()}")
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the run fails
        failures.append(name)
        print(f"FAIL {name}: {type(error).__name__}: {error}")


def create():
    message = client.messages.create(
        model=model, max_tokens=64, system="Answer briefly.",
        messages=[{"role": "user", "content": "What is the capital of France?"}], extra_body=extra)
    assert message.role == "assistant" and message.content[0].type == "text", message
    assert message.stop_reason in ("end_turn", "max_tokens"), message.stop_reason
    return f"{message.stop_reason}, {message.usage.output_tokens} tokens: {message.content[0].text[:60]!r}"


def stream():
    kinds, text = [], ""
    with client.messages.stream(
            model=model, max_tokens=48,
            messages=[{"role": "user", "content": "Name three colours."}], extra_body=extra) as events:
        for event in events:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = events.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert final.content[0].text == text, (final.content[0].text, text)
    return f"{len(kinds)} events, final message equals the deltas ({len(text)} characters)"


def stop_sequences():
    whole = client.messages.create(
        model=model, max_tokens=48,
        messages=[{"role": "user", "content": "Count from one to ten in words."}], extra_body=extra)
    words = whole.content[0].text.split()
    stop = words[len(words) // 2]
    message = client.messages.create(
        model=model, max_tokens=48, stop_sequences=[stop],
        messages=[{"role": "user", "content": "Count from one to ten in words."}], extra_body=extra)
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop, message
    assert stop not in message.content[0].text
    return f"stopped at {stop!r}"


def max_tokens():
    message = client.messages.create(
        model=model, max_tokens=5, messages=[{"role": "user", "content": "Tell me a long story."}], extra_body=extra)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 5, message
    return "max_tokens after 5"


def forced_tool():
    message = client.messages.create(
        model=model, max_tokens=80, tools=[WEATHER], messages=QUESTION,
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body=extra)
    call = next(b for b in message.content if b.type == "tool_use")
    assert message.stop_reason == "tool_use" and call.name == "get_weather", message
    assert isinstance(call.input["city"], str) and call.input["unit"] in ("celsius", "fahrenheit"), call.input
    return f"{call.name}({json.dumps(call.input)})"


def streamed_tool():
    pieces = []
    with client.messages.stream(
            model=model, max_tokens=80, tools=[WEATHER], messages=QUESTION,
            tool_choice={"type": "any"}, extra_body=extra) as events:
        for event in events:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                pieces.append(event.delta.partial_json)
        final = events.get_final_message()
    call = next(b for b in final.content if b.type == "tool_use")
    assert json.loads("".join(pieces)) == call.input, (pieces, call.input)
    return f"{len(pieces)} input_json_delta pieces make {json.dumps(call.input)}"


def tool_round_trip():
    first = client.messages.create(
        model=model, max_tokens=80, tools=[WEATHER], messages=QUESTION,
        tool_choice={"type": "any"}, extra_body=extra)
    call = next(b for b in first.content if b.type == "tool_use")
    messages = QUESTION + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees, sunny"}]},
    ]
    answer = client.messages.create(model=model, max_tokens=60, tools=[WEATHER],
                                    messages=messages, extra_body=extra)
    assert answer.content[0].type == "text" and answer.content[0].text, answer
    return repr(answer.content[0].text[:60])


def count_tokens():
    counted = client.messages.count_tokens(model=model, messages=QUESTION, tools=[WEATHER])
    message = client.messages.create(model=model, max_tokens=1, messages=QUESTION, tools=[WEATHER])
    assert counted.input_tokens == message.usage.input_tokens, (counted, message.usage)
    return f"{counted.input_tokens} input tokens, as the message used"


def errors():
    try:
        client.messages.create(model=model, max_tokens=0, messages=QUESTION)
    except anthropic.BadRequestError as error:
        assert error.body["error"]["type"] == "invalid_request_error", error.body
        return f"BadRequestError: {error.body['error']['message']}"
    raise AssertionError("max_tokens 0 was accepted")


for name, fn in [("messages.create", create), ("messages.stream", stream), ("stop_sequences", stop_sequences),
                 ("max_tokens", max_tokens), ("forced tool use", forced_tool), ("streamed tool input", streamed_tool),
                 ("tool_result round trip", tool_round_trip), ("count_tokens", count_tokens), ("errors", errors)]:
    check(name, fn)
sys.exit(1 if failures else 0)
