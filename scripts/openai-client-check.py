#!/usr/bin/env python3
"""Drives a running recyclegpt server with the official `openai` Python client, unmodified:
structured outputs parsed into Pydantic models in each decode mode, a tool-call round trip (call,
result, answer) streamed and not, the Responses API whole and streamed (with function calls too),
stored responses (`previous_response_id`, `retrieve`, `delete`), and plain chat streams. Prints one line per check and exits non-zero on a failure.

    python3 -m venv /tmp/oai && /tmp/oai/bin/pip install openai pydantic
    /tmp/oai/bin/python scripts/openai-client-check.py http://127.0.0.1:8080/v1 [MODES]

MODES defaults to off,verify,alternate (the server needs a module for the last two). Answers
get the server's default length (`max_tokens` left out), which fits any context.
"""
import sys

import openai
from pydantic import BaseModel, Field

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/v1"
modes = (sys.argv[2] if len(sys.argv) > 2 else "off,verify,alternate").split(",")
client = openai.OpenAI(base_url=base, api_key="unused")
model = client.models.list().data[0].id
failures = []


def check(name, fn):
    try:
        print(f"ok   {name}: {fn()}")
    except Exception as error:  # noqa: BLE001 - every failure is reported, then the run fails
        failures.append(name)
        print(f"FAIL {name}: {type(error).__name__}: {error}")


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: float = Field(ge=0, le=100)


def parse(mode):
    completion = client.chat.completions.parse(
        model=model,
        messages=[{"role": "user", "content": "Describe the city of Paris as JSON."}],
        response_format=City,
        temperature=0,
        extra_body={"recycle": mode},
    )
    city = completion.choices[0].message.parsed
    assert isinstance(city, City), completion
    return city


for mode in modes:
    check(f"chat.completions.parse ({mode})", lambda mode=mode: parse(mode))


def responses_whole():
    response = client.responses.create(
        model=model, instructions="Answer in one sentence.", input="What is the capital of France?",
        max_output_tokens=40, temperature=0)
    assert response.status in ("completed", "incomplete") and response.output_text, response
    return repr(response.output_text)


def responses_streamed():
    kinds, text = [], ""
    with client.responses.stream(model=model, input="Say hello in one short sentence.", temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                text += event.delta
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    assert final.output_text == text, (final.output_text, text)
    return f"{len(kinds)} events, {text!r}"


def responses_raw_stream():
    events = list(client.responses.create(model=model, input="Count to three.", max_output_tokens=12, stream=True))
    assert events[0].type == "response.created", events[0]
    return f"{len(events)} events, last {events[-1].type}"


def responses_parse():
    response = client.responses.parse(model=model, input="Describe the city of Rome as JSON.", text_format=City,
                                      temperature=0)
    assert isinstance(response.output_parsed, City), response
    return response.output_parsed


def chat_stream():
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hi."}],
                                            max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    return f"{len(chunks)} chunks, usage {chunks[-1].usage}"


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}


def tool_round_trip(stream):
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    if stream:
        calls = {}
        for chunk in client.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                                    tool_choice=forced, temperature=0, stream=True):
            for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
                call = calls.setdefault(delta.index, {"id": delta.id, "name": delta.function.name, "arguments": ""})
                call["arguments"] += delta.function.arguments or ""
        call = calls[0]
        tool_call = {"id": call["id"], "type": "function",
                     "function": {"name": call["name"], "arguments": call["arguments"]}}
    else:
        completion = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER],
                                                    tool_choice=forced, temperature=0)
        assert completion.choices[0].finish_reason == "tool_calls", completion
        tool_call = completion.choices[0].message.tool_calls[0].model_dump()
    import json
    arguments = json.loads(tool_call["function"]["arguments"])
    messages += [{"role": "assistant", "content": None, "tool_calls": [tool_call]},
                 {"role": "tool", "tool_call_id": tool_call["id"], "content": '{"temperature": 21, "sky": "sunny"}'}]
    answer = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER], temperature=0,
                                            max_tokens=40)
    assert answer.choices[0].message.content, answer
    return f"called get_weather({arguments}), then {answer.choices[0].message.content[:60]!r}"


def responses_tools():
    tool = {"type": "function", "name": "get_weather", "description": "The weather in a city now",
            "parameters": WEATHER["function"]["parameters"]}
    first = client.responses.create(model=model, input="What is the weather in Paris?", tools=[tool],
                                    tool_choice={"type": "function", "name": "get_weather"}, temperature=0)
    call = next(item for item in first.output if item.type == "function_call")
    with client.responses.stream(model=model, input="What is the weather in Paris?", tools=[tool],
                                 tool_choice="required", parallel_tool_calls=False, temperature=0) as stream:
        streamed = [item for item in stream.get_final_response().output if item.type == "function_call"]
    answer = client.responses.create(model=model, tools=[tool], temperature=0, max_output_tokens=40, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temperature": 21}'}])
    assert streamed and answer.output_text, (streamed, answer)
    return f"{call.name}({call.arguments}), streamed {streamed[0].arguments}, then {answer.output_text[:40]!r}"


def stored_responses():
    first = client.responses.create(model=model, input="My name is Hamlet.", store=True, temperature=0,
                                    max_output_tokens=20)
    second = client.responses.create(model=model, input="What is my name?", previous_response_id=first.id,
                                     temperature=0, max_output_tokens=20)
    assert second.previous_response_id == first.id and second.usage.input_tokens > first.usage.input_tokens
    read = client.responses.retrieve(first.id)
    assert read.output_text == first.output_text, (read, first)
    client.responses.delete(first.id)
    try:
        client.responses.retrieve(first.id)
    except openai.NotFoundError:
        return f"continued ({second.usage.input_tokens} input tokens), retrieved, deleted: 404 after"
    raise AssertionError("a deleted response was still found")


check("tool round trip", lambda: tool_round_trip(False))
check("responses tools round trip", responses_tools)
check("tool round trip (stream)", lambda: tool_round_trip(True))
check("responses.create", responses_whole)
check("responses.stream", responses_streamed)
check("responses.create(stream=True)", responses_raw_stream)
check("responses.parse", responses_parse)
check("chat.completions.create(stream=True)", chat_stream)
check("stored responses", stored_responses)
sys.exit(1 if failures else 0)
