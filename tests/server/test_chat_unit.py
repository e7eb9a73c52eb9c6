"""POST /v1/chat/completions against a scripted fake engine (real tokenizer and harmony renderer), and the
tool_choice constraint on token sequences."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from oss_engine.chat.harmony import HarmonyRenderer
from oss_engine.chat.tokenizer import HARMONY_TOKENS as T
from oss_engine.chat.tokenizer import load_tokenizer
from oss_engine.chat.tool_choice import ToolChoiceGrammar
from oss_engine.outputs import CompletionOutput, RequestOutput
from oss_engine.server import chat, chat_stream
from oss_engine.server.context import ServerContext, ServerSettings
from oss_engine.server.errors import APIError, install_error_handlers

MODEL = "gpt-oss-test"
MAX_MODEL_LEN = 4096
SPECIAL = {"<|channel|>": T.channel, "<|message|>": T.message, "<|end|>": T.end, "<|start|>": T.start,
           "<|return|>": T.return_, "<|call|>": T.call, "<|constrain|>": T.constrain}
ANSWER = "<|channel|>analysis<|message|>Thinking.<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|return|>"
CALL = ('<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary '
        'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>')


def tool(name: str, **fn) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}}}, **fn}}


TOOLS = [tool("get_weather"), tool("get_time")]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def harmony(tok):
    return HarmonyRenderer(tok)


def ids(tok, text: str) -> list[int]:
    out = []
    for part in re.split(r"(<\|[a-z]+\|>)", text):
        out += [SPECIAL[part]] if part in SPECIAL else tok.encode(part) if part else []
    return out


# ---------------------------------------------------------------------------------------------
# The fake engine.
# ---------------------------------------------------------------------------------------------


class _Sample:
    """Plays a script; under a constraint, a disallowed scripted token is replaced by the model's 'second
    choice': <|call|> or <|end|> if allowed, else the last allowed id (a tool header). Forced through a
    header, it resumes its script after the script's own header (the body it had in mind)."""

    def __init__(self, script: list[int], constraint):
        self.script, self.constraint, self.pos = script, constraint, 0
        self.out: list[int] = []

    def next_token(self) -> int:
        allowed = self.constraint.allowed_ids(self.out) if self.constraint else None
        if self.pos < len(self.script):
            want = self.script[self.pos]
            if allowed is None or want in allowed:
                self.pos += 1
                return want
        if allowed is None:
            return T.return_  # the script ran out
        pick = next((t for t in (T.call, T.end) if t in allowed), allowed[-1])
        if pick == T.message and T.message in self.script[self.pos:]:
            self.pos = self.script.index(T.message, self.pos) + 1
        return pick


class FakeEngine:
    def __init__(self, script: list[int], *, per_output: int = 3, fail_after: int | None = None):
        self.script, self.per_output, self.fail_after = script, per_output, fail_after
        self.state = "ready"
        self.calls: list[tuple[list[int], object]] = []
        self.aborted: list[str] = []
        self._ids = itertools.count()

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def stats(self):
        return None

    async def generate(self, request_id, prompt_token_ids, params, *, prompt=None, constraint_factory=None):
        self.calls.append((list(prompt_token_ids), params))
        if len(prompt_token_ids) + params.max_tokens > MAX_MODEL_LEN:
            raise APIError(400, "too long", param="messages", code="context_length_exceeded")
        stops = set(params.extra_stop_token_ids) | ({T.endoftext} if not params.ignore_eos else set())
        samples = [_Sample(self.script, constraint_factory() if constraint_factory else None)
                   for _ in range(params.n)]
        reasons: list[str | None] = [None] * params.n
        logprobs: list[list] = [[] for _ in range(params.n)]
        finished, step = False, 0
        try:
            while not finished:
                if self.fail_after is not None and step >= self.fail_after:
                    raise APIError(500, "The engine failed while serving this request.", type="server_error")
                comps = []
                for i, s in enumerate(samples):
                    new = []
                    while reasons[i] is None and len(new) < self.per_output:
                        t = s.next_token()
                        s.out.append(t)
                        new.append(t)
                        logprobs[i].append(self._logprobs(t, params.logprobs))
                        reasons[i] = ("stop" if t in stops else "length" if len(s.out) >= params.max_tokens
                                      else None)
                    comps.append(CompletionOutput(i, "", list(s.out), reasons[i],
                                                  list(logprobs[i]) if params.logprobs is not None else None,
                                                  delta_token_ids=new))
                finished = all(reasons)
                step += 1
                yield RequestOutput(request_id, prompt, list(prompt_token_ids), comps, finished=finished)
                await asyncio.sleep(0)
        finally:
            if not finished:
                self.aborted.append(request_id)

    @staticmethod
    def _logprobs(token: int, k: int | None) -> dict[int, float]:
        top = {i: (float("-inf") if i == 2 else -1.0 - i) for i in range(k or 0)}
        return {**top, token: -0.5}


def make_client(harmony, tok, script_text: str = ANSWER, **kw) -> tuple[TestClient, FakeEngine]:
    engine = FakeEngine(ids(tok, script_text), **kw)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(chat.router)
    app.state.ctx = ServerContext(settings=ServerSettings(MODEL, MAX_MODEL_LEN), engine=engine, tokenizer=tok,
                                  harmony=harmony, metrics=None)
    return TestClient(app), engine


def body(**kw) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **kw}


def sse(resp) -> list:
    """The data payloads of an SSE body, parsed ("[DONE]" kept as the string)."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [e for e in resp.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[6:] if e[6:] == "[DONE]" else json.loads(e[6:]) for e in events]


def deltas(events: list, index: int = 0) -> list[dict]:
    return [c["choices"][0]["delta"] for c in events if isinstance(c, dict) and c.get("choices")
            and c["choices"][0]["index"] == index]


def joined(ds: list[dict], key: str) -> str:
    return "".join(d.get(key) or "" for d in ds)


def tool_calls_of(ds: list[dict]) -> list[dict]:
    calls: dict[int, dict] = {}
    for d in ds:
        for tc in d.get("tool_calls") or ():
            if "id" in tc:
                assert tc["index"] not in calls and tc["function"]["arguments"] == ""
                calls[tc["index"]] = {"id": tc["id"], "name": tc["function"]["name"], "arguments": ""}
            else:
                assert set(tc) == {"index", "function"} and set(tc["function"]) == {"arguments"}
                calls[tc["index"]]["arguments"] += tc["function"]["arguments"]
    return [calls[i] for i in sorted(calls)]


# ---------------------------------------------------------------------------------------------
# Responses.
# ---------------------------------------------------------------------------------------------


def test_non_streaming_separates_reasoning_and_content(harmony, tok):
    client, engine = make_client(harmony, tok)
    r = client.post("/v1/chat/completions", json=body())
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl") and out["model"] == MODEL
    (choice,) = out["choices"]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "Hello!"
    assert choice["message"]["reasoning_content"] == "Thinking."
    assert not choice["message"].get("tool_calls") and choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    script = ids(tok, ANSWER)
    analysis_len = script.index(T.end) + 1  # the analysis message, header and <|end|> included
    usage = out["usage"]
    assert usage["prompt_tokens"] == len(engine.calls[0][0])
    assert usage["completion_tokens"] == len(script)
    assert usage["total_tokens"] == usage["prompt_tokens"] + len(script)
    assert usage["completion_tokens_details"]["reasoning_tokens"] == analysis_len
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    params = engine.calls[0][1]
    assert set(params.extra_stop_token_ids) == {T.return_, T.call}
    assert params.max_tokens == MAX_MODEL_LEN - usage["prompt_tokens"]  # default: what fits


def test_streaming_matches_non_streaming(harmony, tok):
    client, _ = make_client(harmony, tok, per_output=2)
    whole = client.post("/v1/chat/completions", json=body(seed=1)).json()
    r = client.post("/v1/chat/completions", json=body(seed=1, stream=True, stream_options={"include_usage": True}))
    assert r.status_code == 200
    events = sse(r)
    assert events[-1] == "[DONE]"
    usage_chunk = events[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]
    chunks = events[:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] and "usage" in c
               and c["usage"] is None for c in chunks)
    ds = deltas(events)
    assert ds[0] == {"role": "assistant", "content": ""}
    kinds = [k for d in ds[1:] for k in d]
    assert all(len(d) <= 1 for d in ds[1:])  # never reasoning and content in one delta
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k == "reasoning_content")
    assert len([k for k in kinds if k == "reasoning_content"]) >= 2  # really incremental
    msg = whole["choices"][0]["message"]
    assert joined(ds, "reasoning_content") == msg["reasoning_content"]
    assert joined(ds, "content") == msg["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_tool_call_non_streamed_and_streamed(harmony, tok):
    client, _ = make_client(harmony, tok, CALL)
    out = client.post("/v1/chat/completions", json=body(tools=TOOLS)).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert choice["message"]["content"] is None and choice["message"]["reasoning_content"] == "Need weather."

    events = sse(client.post("/v1/chat/completions", json=body(tools=TOOLS, stream=True)))
    ds = deltas(events)
    streamed = tool_calls_of(ds)
    assert [(c["name"], c["arguments"]) for c in streamed] == [("get_weather", '{"city": "Paris"}')]
    assert sum(1 for d in ds if d.get("tool_calls")) >= 3  # header + several argument pieces
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice_required_forces_a_call(harmony, tok):
    client, engine = make_client(harmony, tok)  # the script answers with a final message
    free = client.post("/v1/chat/completions", json=body(tools=TOOLS)).json()["choices"][0]
    assert free["finish_reason"] == "stop" and free["message"]["content"] == "Hello!"

    out = client.post("/v1/chat/completions", json=body(tools=TOOLS, tool_choice="required", n=2)).json()
    for choice in out["choices"]:  # every sample is constrained
        assert choice["finish_reason"] == "tool_calls", choice
        assert choice["message"]["content"] is None
        assert choice["message"]["reasoning_content"] == "Thinking."  # reasoning first stays allowed
        (call,) = choice["message"]["tool_calls"]
        assert call["function"]["name"] in {"get_weather", "get_time"}
    assert engine.calls[-1][1].n == 2

    events = sse(client.post("/v1/chat/completions", json=body(tools=TOOLS, tool_choice="required", stream=True)))
    assert len(tool_calls_of(deltas(events))) == 1 and events[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_named_tool_choice_forces_that_function(harmony, tok):
    client, _ = make_client(harmony, tok, CALL)  # the script calls get_weather
    named = {"type": "function", "function": {"name": "get_time"}}
    out = client.post("/v1/chat/completions", json=body(tools=TOOLS, tool_choice=named)).json()
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert [c["function"] for c in choice["message"]["tool_calls"]] == [
        {"name": "get_time", "arguments": '{"city": "Paris"}'}]


def test_tool_choice_none_renders_without_tools(harmony, tok):
    client, engine = make_client(harmony, tok)
    assert client.post("/v1/chat/completions", json=body(tools=TOOLS, tool_choice="none")).status_code == 200
    assert "get_weather" not in tok.decode(engine.calls[-1][0])
    assert client.post("/v1/chat/completions", json=body(tools=TOOLS)).status_code == 200
    assert "type get_weather" in tok.decode(engine.calls[-1][0])


def test_history_with_tool_calls_and_results_renders(harmony, tok):
    client, engine = make_client(harmony, tok)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "reasoning_content": "Call the tool.",
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ]
    r = client.post("/v1/chat/completions", json=body(messages=messages, tools=TOOLS))
    assert r.status_code == 200, r.text
    prompt = tok.decode(engine.calls[-1][0])
    assert "Be brief." in prompt and "Call the tool." in prompt
    assert 'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>' in prompt
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny, 21C<|end|>" in prompt
    assert prompt.endswith("<|start|>assistant")


def test_logprobs_whole_and_streamed(harmony, tok):
    client, _ = make_client(harmony, tok)
    out = client.post("/v1/chat/completions", json=body(logprobs=True, top_logprobs=3)).json()
    entries = out["choices"][0]["logprobs"]["content"]
    assert len(entries) == out["usage"]["completion_tokens"]
    script = ids(tok, ANSWER)
    assert [e["token"] for e in entries] == [tok.decode([t]) for t in script]
    assert all(e["logprob"] == -0.5 and len(e["top_logprobs"]) == 3 for e in entries)
    assert entries[0]["bytes"] == list(tok.decode_bytes([script[0]]))
    assert min(t["logprob"] for e in entries for t in e["top_logprobs"]) == chat_stream.LOGPROB_FLOOR  # -inf clamped

    events = sse(client.post("/v1/chat/completions", json=body(logprobs=True, top_logprobs=3, stream=True)))
    streamed = [e for c in events if isinstance(c, dict) for ch in c["choices"] if ch["logprobs"]
                for e in ch["logprobs"]["content"]]
    assert streamed == entries


def test_stop_strings_cut_the_answer(harmony, tok):
    client, engine = make_client(harmony, tok, per_output=1)
    for stop in ("lo!", ["xyz", "llo"]):  # across tokens ("Hello" + "!") and inside one token
        out = client.post("/v1/chat/completions", json=body(stop=stop)).json()
        want = "Hel" if stop == "lo!" else "He"
        assert out["choices"][0]["message"]["content"] == want
        assert out["choices"][0]["finish_reason"] == "stop"
        assert out["choices"][0]["message"]["reasoning_content"] == "Thinking."  # reasoning is never cut
        events = sse(client.post("/v1/chat/completions", json=body(stop=stop, stream=True)))
        assert joined(deltas(events), "content") == want
    assert engine.aborted  # the "lo!" stop ends the request before the engine finished it


def test_errors_before_and_during_the_stream(harmony, tok):
    client, _ = make_client(harmony, tok)
    for stream in (False, True):  # before the first chunk: a plain JSON error, not a stream
        r = client.post("/v1/chat/completions", json=body(max_tokens=10**6, stream=stream))
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")
        assert r.json()["error"]["code"] == "context_length_exceeded"

    client, _ = make_client(harmony, tok, fail_after=2)
    events = sse(client.post("/v1/chat/completions", json=body(stream=True)))
    assert events[-1] != "[DONE]" and events[-1]["error"]["type"] == "server_error"
    assert deltas(events)[0] == {"role": "assistant", "content": ""}


def test_closing_the_stream_aborts_the_request(harmony, tok):
    client, engine = make_client(harmony, tok, per_output=1)

    class _Req:
        app = client.app

        async def is_disconnected(self):
            return False

    async def run():
        resp = await chat.create_chat_completion(chat.ChatCompletionRequest.model_validate(body(stream=True)),
                                                 _Req())
        it = resp.body_iterator
        first = await anext(it)
        assert engine.aborted == []
        await it.aclose()  # what starlette does when the client goes away
        return first, list(engine.aborted)  # before asyncio.run's own clean-up of live generators

    first, aborted = asyncio.run(run())
    assert '"role":"assistant"' in first and aborted == ["chatcmpl-0"]


def test_client_disconnect_stops_a_non_streamed_request(harmony, tok, monkeypatch):
    client, engine = make_client(harmony, tok, per_output=1)
    monkeypatch.setattr(chat, "DISCONNECT_POLL_S", -1.0)

    class _Gone:
        app = client.app

        async def is_disconnected(self):
            return True

    resp = asyncio.run(chat.create_chat_completion(chat.ChatCompletionRequest.model_validate(body()), _Gone()))
    assert engine.aborted == ["chatcmpl-0"]
    assert json.loads(resp.body)["usage"]["completion_tokens"] < len(ids(tok, ANSWER))


# ---------------------------------------------------------------------------------------------
# Validation: every bad field is a 4xx naming it; nothing reaches the engine.
# ---------------------------------------------------------------------------------------------

BAD = [
    (dict(temperature=3), "temperature"),
    (dict(temperature="hot"), "temperature"),
    (dict(n=0), "n"),
    (dict(n=17), "n"),
    (dict(n=True), "n"),
    (dict(stream="yes"), "stream"),
    (dict(top_logprobs=2), "top_logprobs"),
    (dict(logprobs=True, top_logprobs=21), "top_logprobs"),
    (dict(top_p=0), "top_p"),
    (dict(presence_penalty=-3), "presence_penalty"),
    (dict(frequency_penalty=2.5), "frequency_penalty"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_completion_tokens=-1), "max_completion_tokens"),
    (dict(seed=2**64), "seed"),
    (dict(stop=["x"] * 17), "stop"),
    (dict(stop=5), "stop"),
    (dict(logit_bias={"abc": 1}), "logit_bias"),
    (dict(logit_bias={"5": 101}), "logit_bias"),
    (dict(logit_bias={"300000": 1}), "logit_bias"),
    (dict(logit_bias={str(i): 1 for i in range(301)}), "logit_bias"),
    (dict(top_k=-2), "top_k"),
    (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(max_tokens=4, min_tokens=5), "min_tokens"),
    (dict(reasoning_effort="extreme"), "reasoning_effort"),
    (dict(tools=[tool("bad name!")]), "tools"),
    (dict(tools=[tool("x" * 65)]), "tools"),
    (dict(tools=[{"type": "retrieval", "function": {"name": "f"}}]), "tools"),
    (dict(tools=[tool("f", parameters="not an object")]), "tools"),
    (dict(tools=[tool("f"), tool("f")]), "tools"),
    (dict(tools=[tool(f"f{i}") for i in range(129)]), "tools"),
    (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
    (dict(tool_choice="required"), "tool_choice"),
    (dict(tools=TOOLS, tool_choice="sometimes"), "tool_choice"),
    (dict(messages=[]), "messages"),
    (dict(messages="hello"), "messages"),
    (dict(messages=[{"role": "robot", "content": "x"}]), "messages"),
    (dict(messages=[{"role": "user"}]), "messages"),
    (dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), "messages"),
    (dict(messages=[{"role": "user", "content": "x"}] * 2049), "messages"),
    (dict(messages=[{"role": "tool", "tool_call_id": "nope", "content": "x"}]), "messages"),
    (dict(model="gpt-4o"), "model"),
]


@pytest.mark.parametrize("patch,param", BAD, ids=[f"{i}-{p}" for i, (_, p) in enumerate(BAD)])
def test_bad_fields_are_4xx_naming_the_field(harmony, tok, patch, param):
    client, engine = make_client(harmony, tok)
    r = client.post("/v1/chat/completions", json=body(**patch))
    err = r.json()["error"]
    assert r.status_code == (404 if param == "model" else 400), r.text
    assert (err["param"] or "").split(".")[0] == param, err
    assert set(err) == {"message", "type", "param", "code"}
    if param == "model":
        assert err["code"] == "model_not_found"
    assert engine.calls == []


def test_nan_huge_and_unknown_fields(harmony, tok):
    client, engine = make_client(harmony, tok)
    raw = json.dumps(body()).replace('"model"', '"temperature": NaN, "model"')
    r = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"

    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body(messages=[{"role": "user", "content": "a" * 1_000_001}]))
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert time.perf_counter() - t0 < 1.0 and engine.calls == []  # refused before tokenization

    r = client.post("/v1/chat/completions", json=body(frobnicate=1, user="u1", max_completion_tokens=50))
    assert r.status_code == 200 and engine.calls[-1][1].max_tokens == 50


# ---------------------------------------------------------------------------------------------
# The constraint on token sequences.
# ---------------------------------------------------------------------------------------------


def test_constraint_walks_the_harmony_grammar(tok):
    grammar = ToolChoiceGrammar(tok, ["get_weather", "get_time"])
    c = grammar()
    analysis = [T.channel] + tok.encode("analysis") + [T.message]
    header = ([T.channel] + tok.encode("commentary to=functions.get_weather ") + [T.constrain]
              + tok.encode("json") + [T.message])
    assert c.allowed_ids([]) == [T.channel]
    assert set(c.allowed_ids([T.channel])) == {tok.encode("analysis")[0], tok.encode("commentary")[0]}
    out: list[int] = []
    for t in analysis:  # the model may reason first
        assert t in c.allowed_ids(out)
        out.append(t)
    body_ids = set(c.allowed_ids(out))
    assert T.return_ not in body_ids and T.call not in body_ids and T.end in body_ids
    assert len(body_ids) == tok.vocab_size - 3
    out += tok.encode("Let me think.") + [T.end]
    assert c.allowed_ids(out) == [T.start]
    out.append(T.start)
    assert c.allowed_ids(out) == tok.encode("assistant")
    out += tok.encode("assistant")
    final = [T.channel] + tok.encode("final")
    assert final[1] not in c.allowed_ids(out + final[:1])  # no final answer
    for t in header:
        assert t in c.allowed_ids(out), t
        out.append(t)
    body_ids = set(c.allowed_ids(out))
    assert T.return_ not in body_ids and T.call in body_ids and len(body_ids) == tok.vocab_size - 2
    out += tok.encode('{"city": "Paris"}') + [T.call]
    assert c.allowed_ids(out) is None  # done
    fresh = grammar()  # incremental and replayed states agree at every prefix
    for k in range(len(out)):
        a, b = c.allowed_ids(out[:k]), fresh.allowed_ids(out[:k])
        assert (a is None and b is None) or set(a) == set(b), k


def test_constraint_named_function_and_off_grammar(tok):
    c = ToolChoiceGrammar(tok, ["get_time"])()
    weather = [T.channel] + tok.encode("commentary to=functions.get_weather ")
    time_ = [T.channel] + tok.encode("commentary to=functions.get_time ")
    k = next(i for i, (a, b) in enumerate(zip(weather, time_)) if a != b)
    assert c.allowed_ids(time_[:k]) == [time_[k]]  # only the named function's path
    assert weather[k] not in c.allowed_ids(weather[:k])
    assert c.allowed_ids([T.return_]) is None  # left the grammar (a sampler that ignored the mask): free
    with pytest.raises(ValueError):
        ToolChoiceGrammar(tok, [])


def test_the_openai_client_reads_the_responses(harmony, tok):
    openai = pytest.importorskip("openai")
    client, _ = make_client(harmony, tok, CALL)
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client, max_retries=0)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, logprobs=True, top_logprobs=1)
    call = r.choices[0].message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert r.usage.completion_tokens_details.reasoning_tokens == 7 and r.choices[0].logprobs.content
    stream = oai.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True,
                                         stream_options={"include_usage": True})
    chunks = list(stream)
    args = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                   if c.choices and c.choices[0].delta.tool_calls)
    assert args == '{"city": "Paris"}' and chunks[-1].usage.total_tokens == r.usage.total_tokens
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="nope", messages=messages)


def test_constraint_budget_closes_reasoning_in_time(tok):
    header = ([T.channel] + tok.encode("commentary to=functions.get_weather ") + [T.constrain]
              + tok.encode("json") + [T.message])
    for max_tokens in (40, 14):
        c = ToolChoiceGrammar(tok, ["get_weather"], max_tokens=max_tokens, call_reserve=8)()
        out: list[int] = []
        while len(out) < max_tokens:  # a model that always wants to keep reasoning
            allowed = c.allowed_ids(out)
            out.append(5 if 5 in allowed else tok.encode("analysis")[0] if tok.encode("analysis")[0] in allowed
                       else allowed[0])
        start = next(i for i in range(len(out)) if out[i:i + len(header)] == header)
        if max_tokens == 40:  # reasoned, closed it in time, and the call keeps its reserve
            assert out[1] == tok.encode("analysis")[0] and T.end in out
            assert len(out) - (start + len(header)) == 8
        else:  # no room to reason: the call header comes first
            assert start == 0


def test_required_call_from_a_model_that_never_stops_reasoning(harmony, tok):
    client, _ = make_client(harmony, tok, "<|channel|>analysis<|message|>" + "Hmm. " * 100)
    out = client.post("/v1/chat/completions", json=body(tools=TOOLS, tool_choice="required", max_tokens=60)).json()
    choice = out["choices"][0]
    assert out["usage"]["completion_tokens"] == 60 and choice["finish_reason"] == "length"
    assert choice["message"]["reasoning_content"].startswith("Hmm.")
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_time"]
