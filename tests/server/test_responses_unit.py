"""/v1/responses against a scripted fake engine (real tokenizer and harmony renderer, no model): output
items and usage, tools and tool_choice, previous_response_id and the bounded store, the stream's event
sequence (checked against the openai client's own types and stream accumulator), and errors."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from oss_engine.chat.harmony import HarmonyRenderer
from oss_engine.chat.tokenizer import HARMONY_TOKENS, load_tokenizer
from oss_engine.chat.tool_choice import ToolChoiceGrammar
from oss_engine.outputs import CompletionOutput, RequestOutput
from oss_engine.server import responses
from oss_engine.server.async_engine import EngineState
from oss_engine.server.context import ServerContext, ServerSettings
from oss_engine.server.errors import APIError, install_error_handlers

T = HARMONY_TOKENS
ANSWER = "<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|return|>"
CALL = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')
TOOL = {"type": "function", "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
CHAT_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                              "parameters": TOOL["parameters"]}}
EVENT_ADAPTER = TypeAdapter(ResponseStreamEvent)


def harmony_ids(tokenizer, text: str) -> list[int]:
    out = []
    for part in re.split(r"(<\|[a-z_]+\|>)", text):
        if part:
            out += [tokenizer.token_id(part)] if part.startswith("<|") else tokenizer.encode(part)
    return out


@dataclass
class Call:
    prompt_token_ids: list[int]
    params: object
    constraint_factory: object


class FakeEngine:
    """Answers every request with the ids of `script` (cut at max_tokens: finish "length"), `per_step` ids
    per output."""

    def __init__(self, tokenizer, per_step: int = 3):
        self.tok, self.per_step = tokenizer, per_step
        self.state = EngineState.READY
        self.script = harmony_ids(tokenizer, ANSWER)
        self.calls: list[Call] = []
        self.closed: list[bool] = []
        self.fail_before: APIError | None = None
        self.fail_after_first: APIError | None = None
        self._n = 0

    def new_request_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def stats(self):
        return None

    async def generate(self, request_id, prompt_token_ids, params, *, prompt=None, constraint_factory=None):
        self.calls.append(Call(list(prompt_token_ids), params, constraint_factory))
        if self.fail_before is not None:
            raise self.fail_before
        ids = self.script[:params.max_tokens]
        reason = "length" if len(ids) < len(self.script) else "stop"
        finished = False
        try:
            for upto in range(self.per_step, len(ids) + self.per_step, self.per_step):
                upto = min(upto, len(ids))
                before = max(0, upto - self.per_step)
                finished = upto == len(ids)
                comp = CompletionOutput(0, self.tok.decode(ids[:upto]), ids[:upto], reason if finished else None,
                                        delta_token_ids=ids[before:upto])
                yield RequestOutput(request_id, None, list(prompt_token_ids), [comp], finished=finished,
                                    num_cached_tokens=2)
                if self.fail_after_first is not None:
                    raise self.fail_after_first
                await asyncio.sleep(0)
        finally:
            self.closed.append(finished)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def harmony(tokenizer):
    return HarmonyRenderer(tokenizer)


@pytest.fixture
def engine(tokenizer):
    return FakeEngine(tokenizer)


def make_client(engine, tokenizer, harmony, **settings):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(responses.router)
    s = ServerSettings(served_model_name="m", max_model_len=4096, **settings)
    app.state.ctx = ServerContext(s, engine, tokenizer, harmony, metrics=None)
    return TestClient(app)


@pytest.fixture
def client(engine, tokenizer, harmony):
    with make_client(engine, tokenizer, harmony) as c:
        yield c


def post(client, **body):
    return client.post("/v1/responses", json={"model": "m", **body})


def sse_events(text: str) -> list[dict]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append(data)
    return events


# ---- whole responses ---------------------------------------------------------------------------------------


def test_reasoning_and_message_items_and_usage(client, engine, harmony, tokenizer):
    r = post(client, input="Hi")
    assert r.status_code == 200, r.text
    body = r.json()
    Response.model_validate(body)
    call = engine.calls[0]
    assert call.prompt_token_ids == harmony.render_chat([{"role": "user", "content": "Hi"}], reasoning_effort="medium")
    assert set(call.params.extra_stop_token_ids) == {T.return_, T.call} and call.constraint_factory is None
    assert call.params.max_tokens == 4096 - len(call.prompt_token_ids)  # whatever fits
    assert body["id"].startswith("resp_") and body["object"] == "response" and body["status"] == "completed"
    assert body["incomplete_details"] is None and body["error"] is None and body["model"] == "m"
    reasoning, message = body["output"]
    assert reasoning["type"] == "reasoning"
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Thinking."}]
    assert message["type"] == "message" and message["role"] == "assistant" and message["status"] == "completed"
    assert [c["text"] for c in message["content"]] == ["Hello!"] and message["content"][0]["type"] == "output_text"
    analysis = harmony_ids(tokenizer, "<|channel|>analysis<|message|>Thinking.<|end|>")
    n_in, n_out = len(call.prompt_token_ids), len(engine.script)
    assert body["usage"] == {"input_tokens": n_in,
                             "input_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                             "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": len(analysis)},
                             "total_tokens": n_in + n_out}
    assert engine.closed == [True]


def test_instructions_effort_and_sampling(client, engine, harmony):
    r = post(client, input="Hi", instructions="Be brief.", reasoning={"effort": "high"}, temperature=0.3, top_p=0.9,
             max_output_tokens=100, metadata={"k": "v"}, user="u", store=False)
    assert r.status_code == 200, r.text
    call = engine.calls[0]
    assert call.prompt_token_ids == harmony.render_chat(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}], reasoning_effort="high")
    assert (call.params.temperature, call.params.top_p, call.params.max_tokens) == (0.3, 0.9, 100)
    body = r.json()
    assert body["instructions"] == "Be brief." and body["reasoning"]["effort"] == "high"
    assert body["metadata"] == {"k": "v"} and body["max_output_tokens"] == 100 and body["temperature"] == 0.3


def test_input_items_render_like_chat(client, engine, harmony):
    items = [
        {"role": "system", "content": "Sys."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Call it."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 20}'},
    ]
    r = post(client, input=items, tools=[TOOL])
    assert r.status_code == 200, r.text
    chat = [{"role": "system", "content": "Sys."}, {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": None, "reasoning_content": "Call it."},
            {"role": "assistant", "content": None, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 20}'}]
    assert engine.calls[0].prompt_token_ids == harmony.render_chat(chat, reasoning_effort="medium", tools=[CHAT_TOOL])


def test_function_call_items(client, engine, tokenizer):
    engine.script = harmony_ids(tokenizer, CALL)
    r = post(client, input="Weather in Paris?", tools=[TOOL])
    assert r.status_code == 200, r.text
    body = r.json()
    Response.model_validate(body)
    reasoning, fc = body["output"]
    assert reasoning["content"][0]["text"] == "Need the weather."
    assert fc["type"] == "function_call" and fc["name"] == "get_weather" and fc["status"] == "completed"
    assert json.loads(fc["arguments"]) == {"city": "Paris"} and fc["call_id"].startswith("call_")
    assert body["status"] == "completed" and body["tools"][0]["name"] == "get_weather"
    assert body["parallel_tool_calls"] is False


def test_tool_choice(client, engine, harmony):
    assert isinstance(post(client, input="x", tools=[TOOL], tool_choice="required").status_code, int)
    assert isinstance(engine.calls[-1].constraint_factory, ToolChoiceGrammar)
    r = post(client, input="x", tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"})
    assert r.status_code == 200 and isinstance(engine.calls[-1].constraint_factory, ToolChoiceGrammar)
    assert r.json()["tool_choice"] == {"type": "function", "name": "get_weather"}
    post(client, input="x", tools=[TOOL], tool_choice="none")
    assert engine.calls[-1].prompt_token_ids == harmony.render_chat([{"role": "user", "content": "x"}])
    assert engine.calls[-1].constraint_factory is None
    for choice in ({"type": "function", "name": "nope"}, "required"):
        r = post(client, input="x", tools=[TOOL] if choice != "required" else None, tool_choice=choice)
        assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
    r = post(client, input="x", tools=[TOOL, TOOL])
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"


def test_incomplete_at_max_output_tokens(client, engine):
    r = post(client, input="Hi", max_output_tokens=4)
    body = r.json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["usage"]["output_tokens"] == 4
    assert [item["status"] for item in body["output"]] == ["incomplete"]  # cut inside the analysis message


# ---- conversations -----------------------------------------------------------------------------------------


def test_previous_response_id_continues_the_conversation(client, engine, harmony, tokenizer):
    first = post(client, input="Hi", instructions="Only for turn one.").json()
    r = post(client, input="And again?", previous_response_id=first["id"])
    assert r.status_code == 200, r.text
    assert r.json()["previous_response_id"] == first["id"]
    expected = harmony.render_chat([{"role": "user", "content": "Hi"},
                                    {"role": "assistant", "content": None, "reasoning_content": "Thinking."},
                                    {"role": "assistant", "content": "Hello!"},
                                    {"role": "user", "content": "And again?"}])
    second_prompt = engine.calls[1].prompt_token_ids
    assert second_prompt == expected
    text = tokenizer.decode(second_prompt)
    assert "Hi" in text and "Hello!" in text and "And again?" in text
    assert "Thinking." not in text  # a finished turn's analysis is dropped
    assert "Only for turn one." not in text  # instructions are not carried over
    third = post(client, input="Once more", previous_response_id=r.json()["id"])
    assert third.status_code == 200
    assert "And again?" in tokenizer.decode(engine.calls[2].prompt_token_ids)


def test_tool_loop_through_previous_response_id(client, engine, tokenizer):
    engine.script = harmony_ids(tokenizer, CALL)
    first = post(client, input="Weather in Paris?", tools=[TOOL]).json()
    call_id = first["output"][1]["call_id"]
    engine.script = harmony_ids(tokenizer, ANSWER)
    r = post(client, previous_response_id=first["id"], tools=[TOOL],
             input=[{"type": "function_call_output", "call_id": call_id, "output": "20 degrees"}])
    assert r.status_code == 200, r.text
    text = tokenizer.decode(engine.calls[1].prompt_token_ids)
    assert "Need the weather." in text  # analysis kept while the tool loop is in progress
    assert "to=functions.get_weather" in text and "20 degrees" in text


def test_unknown_previous_response_id(client, engine):
    r = post(client, input="x", previous_response_id="resp_nope")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == "previous_response_id" and err["code"] == "previous_response_not_found"
    unstored = post(client, input="x", store=False).json()
    assert post(client, input="y", previous_response_id=unstored["id"]).status_code == 400
    assert client.get(f"/v1/responses/{unstored['id']}").status_code == 404
    assert len(engine.calls) == 1  # the refused ones never reached the engine


def test_store_bound_evicts_the_oldest(engine, tokenizer, harmony):
    with make_client(engine, tokenizer, harmony, response_store_size=2) as c:
        ids = [post(c, input=f"turn {i}").json()["id"] for i in range(3)]
        assert c.get(f"/v1/responses/{ids[0]}").status_code == 404
        got = c.get(f"/v1/responses/{ids[2]}")
        assert got.status_code == 200 and got.json()["id"] == ids[2] and got.json()["output"][1]["type"] == "message"
        r = post(c, input="x", previous_response_id=ids[0])
        assert r.status_code == 400 and r.json()["error"]["code"] == "previous_response_not_found"
        assert post(c, input="x", previous_response_id=ids[1]).status_code == 200


# ---- streaming ---------------------------------------------------------------------------------------------

ITEM_EVENTS = {
    "reasoning": ["response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
                  "response.reasoning_text.done", "response.content_part.done", "response.output_item.done"],
    "message": ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
                "response.output_text.done", "response.content_part.done", "response.output_item.done"],
    "function_call": ["response.output_item.added", "response.function_call_arguments.delta",
                      "response.function_call_arguments.done", "response.output_item.done"],
}


def _collapse(types: list[str]) -> list[str]:
    """Runs of the same delta type become one entry."""
    return [t for i, t in enumerate(types) if not (t.endswith(".delta") and i and types[i - 1] == t)]


@pytest.mark.parametrize("script, kinds", [(ANSWER, ["reasoning", "message"]), (CALL, ["reasoning", "function_call"])])
def test_stream_event_sequence(client, engine, tokenizer, script, kinds):
    engine.script = harmony_ids(tokenizer, script)
    whole = post(client, input="Hi", tools=[TOOL]).json()
    r = post(client, input="Hi", tools=[TOOL], stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    for e in events:
        EVENT_ADAPTER.validate_python(e)  # every event has the shape the openai client declares
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    expected = ["response.created", "response.in_progress"] + [t for k in kinds for t in ITEM_EVENTS[k]]
    assert _collapse(types) == expected + ["response.completed"]
    assert sum(t.endswith(".delta") for t in types) > 2  # really incremental
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["usage"] == whole["usage"]
    # deltas concatenate to each item's final text, and the items are those of the whole response
    for item in final["output"]:
        deltas = "".join(e["delta"] for e in events if e["type"].endswith(".delta") and e["item_id"] == item["id"])
        text = item["arguments"] if item["type"] == "function_call" else item["content"][0]["text"]
        assert deltas == text
    strip = lambda items: [{k: v for k, v in i.items() if k not in ("id", "call_id")} for i in items]
    assert strip(final["output"]) == strip(whole["output"])
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == final["output"]
    assert client.get(f"/v1/responses/{final['id']}").json() == final  # stored once complete


def test_stream_incomplete_ends_with_response_incomplete(client, engine):
    events = sse_events(post(client, input="Hi", stream=True, max_output_tokens=5).text)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_openai_client_parses_the_stream(client, engine):
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client)
    with oai.responses.stream(model="m", input="Hi") as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == "Hello!" == final.output_text
    assert final.usage.output_tokens_details.reasoning_tokens > 0
    plain = oai.responses.create(model="m", input="Hi")
    assert plain.output_text == "Hello!" and plain.output[0].type == "reasoning"


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, param", [
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": "x" * 1_000_001}, "input"),
    ({"input": [{"role": "wizard", "content": "x"}]}, "input"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f"}]}, "input"),
    ({"input": [{"type": "function_call_output", "call_id": "unknown", "output": "x"}]}, "input"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools.0.name"),
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "name": f"f{i}"} for i in range(129)]}, "tools"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"temperature": 3}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": "10"}, "max_output_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"background": True}, "background"),
    ({"text": {"format": {"type": "json_schema"}}}, "text.format.type"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"previous_response_id": "r" * 300}, "previous_response_id"),
])
def test_bad_fields_are_400_with_param(client, engine, extra, param):
    r = post(client, **{"input": "hi", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
    assert engine.calls == []


def test_unknown_model_is_404(client, engine):
    r = client.post("/v1/responses", json={"model": "gpt-9", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_engine_errors_before_output_are_the_response(client, engine, stream):
    engine.fail_before = APIError(429, "busy", type="rate_limit_error", headers={"Retry-After": "1"})
    r = post(client, input="x", stream=stream)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    engine.fail_before = APIError(400, "too long", param="messages", code="context_length_exceeded")
    r = post(client, input="x", stream=stream)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"


def test_mid_stream_error_is_an_error_event(client, engine):
    engine.fail_after_first = APIError(500, "The engine failed while serving this request.", type="server_error")
    events = sse_events(post(client, input="x", stream=True).text)
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "error"
    EVENT_ADAPTER.validate_python(events[-1])
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert engine.closed == [False]


def test_store_character_bound():
    from oss_engine.server.response_store import ResponseStore, StoredResponse

    store = ResponseStore(max_entries=100, max_chars=200)
    entry = lambda text: StoredResponse({"id": "r"}, [{"role": "user", "content": text}])
    store.put("a", entry("x" * 40))
    store.put("b", entry("y" * 40))
    assert store.get("a") is not None and len(store) == 2
    store.put("c", entry("z" * 40))  # over 200 characters in all: the oldest goes
    assert store.get("a") is None and store.get("b") is not None and store.get("c") is not None
    store.put("huge", entry("h" * 500))  # larger than the whole bound: not kept, nothing evicted
    assert store.get("huge") is None and len(store) == 2
    got = store.get("b")
    got.messages.clear()  # callers get copies
    assert store.get("b").messages
