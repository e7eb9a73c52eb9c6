"""/v1/completions against a scripted fake engine (real tokenizer, no model): request validation, prompt
forms, choice indexing, echo, logprobs, streaming, errors from the engine, and that every engine iterator
is closed however the request ends."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from oss_engine.chat.tokenizer import HARMONY_TOKENS, load_tokenizer
from oss_engine.outputs import CompletionOutput, RequestOutput
from oss_engine.server import completions
from oss_engine.server.async_engine import EngineState
from oss_engine.server.completions_protocol import CompletionRequest
from oss_engine.server.context import ServerContext, ServerSettings
from oss_engine.server.errors import APIError, install_error_handlers
from oss_engine.server.fanout import run_unless_disconnected

WORDS = " one two three four five six seven eight nine ten eleven twelve"


@dataclass
class Call:
    request_id: str
    prompt_token_ids: list[int]
    params: object
    prompt: str | None


class FakeEngine:
    """Sample j of a prompt of length L writes f"<L.j>" + WORDS (cut at max_tokens), `per_step` tokens per
    output; a sample that ends naturally adds <|return|> (finish "stop"). Logprobs are made up but shaped
    like the engine's: {sampled id: -0.5, and logprobs more ids}."""

    def __init__(self, tokenizer, per_step: int = 2):
        self.tok, self.per_step = tokenizer, per_step
        self.state = EngineState.READY
        self.calls: list[Call] = []
        self.closed: dict[str, bool] = {}  # request id -> finished normally
        self.fail_before: dict[int, APIError] = {}  # call number -> raised before any output
        self.fail_after_first: APIError | None = None
        self.block_after_first: asyncio.Event | None = None
        self.block_before_first: asyncio.Event | None = None
        self._n = 0

    def new_request_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}-{self._n}"

    def stats(self):
        return None

    def sample_ids(self, prompt_len: int, j: int, max_tokens: int) -> tuple[list[int], str]:
        ids = self.tok.encode(f"<{prompt_len}.{j}>" + WORDS)
        if len(ids) >= max_tokens:
            return ids[:max_tokens], "length"
        return ids + [HARMONY_TOKENS.return_], "stop"

    async def generate(self, request_id, prompt_token_ids, params, *, prompt=None, constraint_factory=None):
        number = len(self.calls)
        self.calls.append(Call(request_id, list(prompt_token_ids), params, prompt))
        if number in self.fail_before:
            raise self.fail_before[number]
        finished = False
        try:
            plans = [self.sample_ids(len(prompt_token_ids), j, params.max_tokens) for j in range(params.n)]
            prompt_lps = None
            if params.prompt_logprobs is not None:
                prompt_lps = [None] + [{t: -2.0, t + 1: -3.0} for t in prompt_token_ids[1:]]
            if self.block_before_first is not None:
                await self.block_before_first.wait()
            step = 0
            while True:
                step += 1
                comps = []
                for j, (ids, reason) in enumerate(plans):
                    upto, before = min(len(ids), step * self.per_step), min(len(ids), (step - 1) * self.per_step)
                    done = upto == len(ids)
                    text_ids = [t for t in ids[:upto] if t != HARMONY_TOKENS.return_]
                    old_ids = [t for t in ids[:before] if t != HARMONY_TOKENS.return_]
                    lps = None
                    if params.logprobs is not None:
                        lps = [{t: -0.5, **{t + k + 1: -1.0 - k for k in range(params.logprobs)}} for t in ids[:upto]]
                    comps.append(CompletionOutput(
                        j, self.tok.decode(text_ids), ids[:upto], reason if done else None, lps,
                        delta_text=self.tok.decode(text_ids)[len(self.tok.decode(old_ids)):],
                        delta_token_ids=ids[before:upto]))
                finished = all(c.finished for c in comps)
                yield RequestOutput(request_id, prompt, list(prompt_token_ids), comps, prompt_lps, finished=finished)
                if finished:
                    return
                if step == 1 and self.fail_after_first is not None:
                    raise self.fail_after_first
                if step == 1 and self.block_after_first is not None:
                    await self.block_after_first.wait()
                await asyncio.sleep(0)
        finally:
            self.closed[request_id] = finished


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture
def engine(tokenizer):
    return FakeEngine(tokenizer)


@pytest.fixture
def client(engine, tokenizer):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(completions.router)
    app.state.ctx = ServerContext(ServerSettings(served_model_name="m", max_model_len=4096), engine, tokenizer,
                                  harmony=None, metrics=None)
    with TestClient(app) as c:
        yield c


def post(client, **body):
    return client.post("/v1/completions", json={"model": "m", **body})


def sse_data(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.split("\n") if line.startswith("data: ")]


def expected_text(engine: FakeEngine, prompt_len: int, j: int, max_tokens: int = 16) -> str:
    ids, _ = engine.sample_ids(prompt_len, j, max_tokens)
    return engine.tok.decode([t for t in ids if t != HARMONY_TOKENS.return_])


# ---- prompts, choices, usage ----------------------------------------------------------------------------


def test_text_prompt(client, engine, tokenizer):
    r = post(client, prompt="Hello <|start|> world")
    assert r.status_code == 200, r.text
    body = r.json()
    openai.types.Completion.model_validate(body)
    ids = tokenizer.encode("Hello <|start|> world")
    assert all(t < 199998 for t in ids)  # special-looking text stays plain text
    call = engine.calls[0]
    assert call.prompt_token_ids == ids and call.prompt == "Hello <|start|> world"
    assert call.params.max_tokens == 16 and call.params.n == 1  # OpenAI's default max_tokens
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-") and body["model"] == "m"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert choice["text"] == expected_text(engine, len(ids), 0)
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 16, "total_tokens": len(ids) + 16}
    assert engine.closed == {call.request_id: True}


def test_token_id_prompts(client, engine):
    r = post(client, prompt=[1, 2, 3], max_tokens=100)
    assert r.status_code == 200, r.text
    assert engine.calls[0].prompt_token_ids == [1, 2, 3] and engine.calls[0].prompt is None
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["text"] == expected_text(engine, 3, 0, 100)
    # completion tokens count the stop token, as the engine does
    assert r.json()["usage"]["completion_tokens"] == len(engine.sample_ids(3, 0, 100)[0])
    r = post(client, prompt=[[5, 6], [7, 8, 9]])
    assert r.status_code == 200, r.text
    assert [c.prompt_token_ids for c in engine.calls[1:]] == [[5, 6], [7, 8, 9]]
    assert [c["text"] for c in r.json()["choices"]] == [expected_text(engine, 2, 0), expected_text(engine, 3, 0)]


def test_n_and_prompts_index_choices(client, engine, tokenizer):
    prompts = ["a", "b c d"]
    r = post(client, prompt=prompts, n=3, max_tokens=8)
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == list(range(6))
    lens = [len(tokenizer.encode(p)) for p in prompts]
    for c in choices:
        i, j = divmod(c["index"], 3)
        assert c["text"] == expected_text(engine, lens[i], j, 8)
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] == sum(lens) and usage["completion_tokens"] == 6 * 8


def test_echo(client, engine, tokenizer):
    r = post(client, prompt="Say it", echo=True, max_tokens=4)
    assert r.json()["choices"][0]["text"] == "Say it" + expected_text(engine, len(tokenizer.encode("Say it")), 0, 4)
    ids = tokenizer.encode("token ids echo")
    r = post(client, prompt=ids, echo=True, max_tokens=4)
    assert r.json()["choices"][0]["text"].startswith("token ids echo")


def test_logprobs_shape(client, engine):
    r = post(client, prompt="Hi there", logprobs=2, max_tokens=5)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    openai.types.Completion.model_validate(r.json())
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 5
    assert "".join(lp["tokens"]) == r.json()["choices"][0]["text"]
    assert lp["token_logprobs"] == [-0.5] * 5
    assert all(len(top) == 3 and max(top.values()) == -0.5 for top in lp["top_logprobs"])
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:k]) for k in range(5)]
    assert engine.calls[0].params.logprobs == 2 and engine.calls[0].params.prompt_logprobs is None


def test_echo_logprobs_include_the_prompt(client, engine, tokenizer):
    ids = tokenizer.encode("Score this sentence")
    r = post(client, prompt="Score this sentence", echo=True, logprobs=1, max_tokens=3)
    choice = r.json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 3
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:len(ids)] == [-2.0] * (len(ids) - 1) and lp["token_logprobs"][len(ids)] == -0.5
    assert lp["text_offset"][len(ids)] == len("Score this sentence")
    assert engine.calls[0].params.prompt_logprobs == 1


def test_echo_with_zero_max_tokens_scores_the_prompt(client, engine, tokenizer):
    ids = tokenizer.encode("Just the prompt")
    r = post(client, prompt="Just the prompt", echo=True, logprobs=0, max_tokens=0)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert choice["text"] == "Just the prompt" and choice["finish_reason"] == "length"
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert r.json()["usage"]["completion_tokens"] == 0
    streamed = post(client, prompt="Just the prompt", echo=True, logprobs=0, max_tokens=0, stream=True)
    [chunk] = [json.loads(d) for d in sse_data(streamed.text)[:-1]]
    assert chunk["choices"][0]["text"] == "Just the prompt" and chunk["choices"][0]["finish_reason"] == "length"
    assert chunk["choices"][0]["logprobs"]["tokens"] == choice["logprobs"]["tokens"]
    assert post(client, prompt="x", max_tokens=0).json()["error"]["param"] == "max_tokens"


def test_sampling_fields_reach_the_engine(client, engine):
    r = post(client, prompt="x", stop="\n", temperature=0, top_p=0.5, seed=7, presence_penalty=1.5,
             frequency_penalty=-1, logit_bias={"42": -100}, top_k=5, min_p=0.1, repetition_penalty=1.2,
             ignore_eos=True, min_tokens=2, user="u", stop_token_ids=[13])
    assert r.status_code == 200, r.text
    p = engine.calls[0].params
    assert p.stop == ["\n"] and p.temperature == 0 and p.top_p == 0.5 and p.seed == 7
    assert p.presence_penalty == 1.5 and p.frequency_penalty == -1 and p.logit_bias == {42: -100.0}
    assert p.top_k == 5 and p.min_p == 0.1 and p.repetition_penalty == 1.2 and p.ignore_eos and p.min_tokens == 2
    assert p.stop_token_ids == [13]
    post(client, prompt="x", stop=["a", "", "b"])
    assert engine.calls[1].params.stop == ["a", "b"]


# ---- streaming -------------------------------------------------------------------------------------------


def test_stream_chunks_usage_and_done(client, engine):
    whole = post(client, prompt=["p one", "p two three"], n=2, max_tokens=7, logprobs=1).json()
    r = post(client, prompt=["p one", "p two three"], n=2, max_tokens=7, logprobs=1, stream=True,
             stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    data = sse_data(r.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    *parts, last = chunks
    assert last["choices"] == [] and last["usage"] == whole["usage"]
    texts, reasons, tokens = {}, {}, {}
    for c in parts:
        assert c["object"] == "text_completion" and c["id"] == parts[0]["id"] and c["usage"] is None
        [ch] = c["choices"]
        texts[ch["index"]] = texts.get(ch["index"], "") + ch["text"]
        tokens[ch["index"]] = tokens.get(ch["index"], []) + ch["logprobs"]["tokens"]
        if ch["finish_reason"] is not None:
            assert ch["index"] not in reasons  # a choice finishes once
            reasons[ch["index"]] = ch["finish_reason"]
    assert texts == {c["index"]: c["text"] for c in whole["choices"]}
    assert reasons == {c["index"]: c["finish_reason"] for c in whole["choices"]}
    assert tokens == {c["index"]: c["logprobs"]["tokens"] for c in whole["choices"]}
    assert len(parts) > 4  # really incremental (2 tokens per output)


def test_stream_without_usage_and_openai_client(client, engine):
    r = post(client, prompt="abc", stream=True, max_tokens=5)
    chunks = [json.loads(d) for d in sse_data(r.text)[:-1]]
    assert all("usage" not in c for c in chunks) and all(c["choices"] for c in chunks)
    oai = openai.OpenAI(base_url="http://testserver/v1", api_key="k", http_client=client)
    got = "".join(c.choices[0].text for c in oai.completions.create(model="m", prompt="abc", max_tokens=5, stream=True))
    assert got == oai.completions.create(model="m", prompt="abc", max_tokens=5).choices[0].text != ""


def test_stream_echo_comes_first(client, engine):
    r = post(client, prompt="Echo me", stream=True, echo=True, max_tokens=3)
    first = json.loads(sse_data(r.text)[0])
    assert first["choices"][0]["text"].startswith("Echo me")


# ---- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, param", [
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [[1, 2], "mixed"]}, "prompt"),
    ({"prompt": [1, -3]}, "prompt"),
    ({"prompt": [1, 2, 999999999]}, "prompt"),
    ({"prompt": [True, 2]}, "prompt"),
    ({"prompt": ["a"] * 17}, "prompt"),
    ({"prompt": "x" * 1_000_001}, "prompt"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_tokens": 10**12}, "max_tokens"),
    ({"max_tokens": "16"}, "max_tokens"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 17}, "n"),
    ({"logprobs": 6}, "logprobs"),
    ({"stop": ["s"] * 17}, "stop"),
    ({"stop": "x" * 2000}, "stop"),
    ({"seed": 2**64}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"1": 101}}, "logit_bias"),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ({"top_k": -2}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"min_tokens": 20, "max_tokens": 10}, "min_tokens"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"echo": 1}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"suffix": "tail"}, "suffix"),
    ({"user": "u" * 1000}, "user"),
    ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ({"stop_token_ids": [10**7]}, "stop_token_ids"),
])
def test_bad_fields_are_400_with_param(client, engine, extra, param):
    r = post(client, **{"prompt": "hi", **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]
    assert engine.calls == []


def test_nan_and_missing_fields(client, engine):
    raw = b'{"model": "m", "prompt": "x", "temperature": NaN}'
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert client.post("/v1/completions", json={"model": "m"}).json()["error"]["param"] == "prompt"
    assert client.post("/v1/completions", json={"prompt": "x"}).json()["error"]["param"] == "model"


def test_unknown_model_is_404(client, engine):
    r = client.post("/v1/completions", json={"model": "gpt-9", "prompt": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "model" and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
def test_engine_errors_before_output_are_the_response(client, engine, stream):
    engine.fail_before[0] = APIError(429, "busy", type="rate_limit_error", headers={"Retry-After": "1"})
    r = post(client, prompt="x", stream=stream)
    assert r.status_code == 429 and r.headers["retry-after"] == "1" and r.json()["error"]["message"] == "busy"
    engine.fail_before[1] = APIError(400, "too long", param="messages", code="context_length_exceeded")
    r = post(client, prompt="x", stream=stream)
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_a_failing_prompt_closes_the_others(client, engine):
    engine.fail_before[2] = APIError(429, "busy", type="rate_limit_error")
    r = post(client, prompt=["a", "b", "c"], max_tokens=50)
    assert r.status_code == 429
    started = [c.request_id for c in engine.calls[:2]]
    assert all(rid in engine.closed and not engine.closed[rid] for rid in started)  # aborted, not finished


def test_mid_stream_error_is_an_sse_error(client, engine):
    engine.fail_after_first = APIError(500, "The engine failed while serving this request.", type="server_error")
    r = post(client, prompt="x", stream=True, max_tokens=10)
    assert r.status_code == 200
    data = sse_data(r.text)
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["type"] == "server_error"
    assert "text_completion" in data[0]


# ---- closing engine iterators ------------------------------------------------------------------------------


def _run_for(engine, tokenizer, **body):
    ctx = ServerContext(ServerSettings(served_model_name="m", max_model_len=4096), engine, tokenizer, None, None)
    req = CompletionRequest.model_validate({"model": "m", **body})
    prompts = [completions.Prompt(tokenizer.encode(p), p) for p in req.prompt]
    return completions._Completion(ctx, req, prompts, completions._sampling_params(req))


def test_stream_closed_early_aborts_every_request(engine, tokenizer):
    run = _run_for(engine, tokenizer, prompt=["a", "b"], n=2, max_tokens=50, stream=True)

    async def go():
        gens, firsts = await run.start()
        stream = run.stream(gens, firsts)
        await stream.__anext__()
        await stream.aclose()  # what Starlette does after a client disconnect cancels the stream
        for _ in range(3):  # cancelled pumps close their iterators within a loop turn or two
            await asyncio.sleep(0)
        assert len(engine.closed) == 2 and not any(engine.closed.values())  # before the loop's teardown

    asyncio.run(go())


def test_cancelled_stream_aborts_every_request(engine, tokenizer):
    engine.block_after_first = asyncio.Event()
    run = _run_for(engine, tokenizer, prompt=["a", "b"], max_tokens=50, stream=True)

    async def go():
        gens, firsts = await run.start()

        async def consume():
            async for _ in run.stream(gens, firsts):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(3):  # cancelled pumps close their iterators within a loop turn or two
            await asyncio.sleep(0)
        assert len(engine.closed) == 2 and not any(engine.closed.values())

    asyncio.run(go())


def test_disconnected_client_cancels_a_whole_completion(engine, tokenizer):
    engine.block_after_first = asyncio.Event()
    run = _run_for(engine, tokenizer, prompt=["a", "b"], max_tokens=50)

    class GoneRequest:
        async def is_disconnected(self):
            return True

    async def go():
        with pytest.raises(APIError) as e:
            await run_unless_disconnected(GoneRequest(), run.complete(), poll_s=0.01)
        assert e.value.status == 499
        for _ in range(3):  # cancelled pumps close their iterators within a loop turn or two
            await asyncio.sleep(0)
        assert len(engine.closed) == 2 and not any(engine.closed.values())

    asyncio.run(go())


def test_an_error_while_others_wait_for_their_first_output_cancels_them(engine, tokenizer):
    engine.block_before_first = asyncio.Event()  # never set: the others wait, like requests in a queue
    engine.fail_before[1] = APIError(429, "busy", type="rate_limit_error")
    run = _run_for(engine, tokenizer, prompt=["a", "b", "c"], max_tokens=50)

    async def go():
        with pytest.raises(APIError) as e:
            await asyncio.wait_for(run.start(), timeout=5)  # at once, not after the others' first output
        assert e.value.status == 429
        await asyncio.sleep(0)
        assert set(engine.closed) == {engine.calls[0].request_id, engine.calls[2].request_id}
        assert not any(engine.closed.values())

    asyncio.run(go())
