"""RELIABILITY.md rows 1-4 against the real server: malformed requests, context overflow, amplification,
auth. Every answer is the expected 4xx in the OpenAI error shape, never a 5xx; /health stays 200."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import API_KEY


def post(server, path, body=None, *, raw: bytes | None = None, headers=None, timeout=30):
    h = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    h.update(headers or {})
    return httpx.post(server.url(path), content=raw if raw is not None else None,
                      json=body if raw is None else None, headers=h, timeout=timeout)


def assert_error(r: httpx.Response, status: int, param: str | None = None, code: str | None = None):
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    assert "Traceback" not in r.text and "/work" not in r.text and "site-packages" not in r.text
    if param is not None:
        assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err


CHAT = "/v1/chat/completions"


def msgs(text="hi"):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize("body, param", [
    ({"messages": msgs()}, "model"),
    ({"model": "tiny"}, "messages"),
    ({"model": "tiny", "messages": "hi"}, "messages"),
    ({"model": "tiny", "messages": []}, "messages"),
    ({"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, None),
    ({"model": "tiny", "messages": msgs(), "temperature": -1}, "temperature"),
    ({"model": "tiny", "messages": msgs(), "temperature": "hot"}, "temperature"),
    ({"model": "tiny", "messages": msgs(), "top_p": 0}, "top_p"),
    ({"model": "tiny", "messages": msgs(), "max_tokens": -5}, "max_tokens"),
    ({"model": "tiny", "messages": msgs(), "max_tokens": 10**12}, None),
    ({"model": "tiny", "messages": msgs(), "n": 0}, "n"),
    ({"model": "tiny", "messages": msgs(), "n": 10**6}, "n"),
    ({"model": "tiny", "messages": msgs(), "top_logprobs": 5}, None),
    ({"model": "tiny", "messages": msgs(), "logprobs": True, "top_logprobs": 99}, "top_logprobs"),
    ({"model": "tiny", "messages": msgs(), "stop": ["x"] * 1000}, "stop"),
    ({"model": "tiny", "messages": msgs(), "logit_bias": {str(i): 1 for i in range(5000)}}, "logit_bias"),
    ({"model": "tiny", "messages": msgs(), "logit_bias": {"999999999": 1}}, None),
    ({"model": "tiny", "messages": msgs(), "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
    ({"model": "tiny", "messages": msgs(), "tools": [{"type": "function"}]}, None),
    ({"model": "tiny", "messages": msgs(), "tool_choice": {"type": "function", "function": {"name": "nope"}},
      "tools": [{"type": "function", "function": {"name": "f"}}]}, None),
    ({"model": "tiny", "messages": msgs(), "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"model": "tiny", "messages": msgs(), "seed": "abc"}, "seed"),
])
def test_malformed_chat_requests_are_400(server, body, param):
    assert_error(post(server, CHAT, body), 400, param)


def test_bad_bodies(server):
    assert_error(post(server, CHAT, raw=b"{not json"), 400)
    assert_error(post(server, CHAT, raw=b"[1, 2]"), 400)
    assert_error(post(server, CHAT, raw=b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], '
                                     b'"temperature": NaN}'), 400)


def test_unknown_model_and_route(server):
    assert_error(post(server, CHAT, {"model": "gpt-9", "messages": msgs()}), 404, "model", "model_not_found")
    r = httpx.get(server.url("/v1/nope"), headers=server.headers())
    assert_error(r, 404)


def test_out_of_range_token_ids(server):
    assert_error(post(server, "/v1/completions", {"model": "tiny", "prompt": [1, 2, 999999999]}), 400, "prompt")
    assert_error(post(server, "/v1/completions", {"model": "tiny", "prompt": [1, -3]}), 400, "prompt")


def test_context_overflow_boundary(server):
    # the server's max_model_len is 1024; 1000 token ids + max_tokens around the boundary
    ids = [100] * 1000
    ok = post(server, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 24}, timeout=120)
    assert ok.status_code == 200, ok.text  # exactly at the boundary: accepted
    r = post(server, "/v1/completions", {"model": "tiny", "prompt": ids, "max_tokens": 25})
    assert_error(r, 400, code="context_length_exceeded")
    msg = r.json()["error"]["message"]
    assert "1024" in msg and "1025" in msg


def test_amplification_rejected_fast(server):
    t0 = time.monotonic()
    big = "word " * (2 << 20)  # a 10 MB prompt
    r = post(server, "/v1/completions", raw=f'{{"model": "tiny", "prompt": "{big}"}}'.encode())
    assert_error(r, 413)
    for body in ({"model": "tiny", "messages": msgs(), "n": 10000},
                 {"model": "tiny", "prompt": ["a"] * 10000},
                 {"model": "tiny", "messages": msgs(), "tools": [{"type": "function", "function": {"name": f"f{i}"}}
                                                                 for i in range(5000)]}):
        path = "/v1/completions" if "prompt" in body else CHAT
        assert_error(post(server, path, body), 400)
    assert time.monotonic() - t0 < 5  # all refused without tokenizing or generating
    t1 = time.monotonic()
    assert httpx.get(server.url("/health")).status_code == 200
    assert time.monotonic() - t1 < 0.5


@pytest.mark.parametrize("path", ["/v1/models", "/v1/chat/completions", "/v1/completions", "/v1/responses",
                                  "/metrics", "//v1/models", "/v1//models", "/V1/models", "/v1/models/",
                                  "/v1%2Fmodels", "/health/../v1/models", "/nope"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Bearer {API_KEY}x", "Bearer", API_KEY, f"bearer {API_KEY}"])
def test_auth_on_every_protected_route(server, path, auth):
    headers = {} if auth is None else {"Authorization": auth}
    r = httpx.request("POST" if "completions" in path or "responses" in path else "GET", server.base + path,
                      headers=headers, json={}, timeout=10)
    assert_error(r, 401)


def test_health_is_public_and_still_200(server):
    assert httpx.get(server.url("/health")).status_code == 200
