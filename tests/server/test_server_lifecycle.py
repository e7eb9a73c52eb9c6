"""Overload (exactly the capacity is served, the rest get an immediate 429), a KV pool too small for the load
(preemption, every request completes with the unpressured greedy text), and SIGTERM drain (in-flight requests
finish, new ones are refused, exit code 0); one listening socket."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import httpx
import pytest

from oss_engine import LLM, SamplingParams

from conftest import API_KEY, start_server

LONG = {"model": "tiny", "prompt": "tell me a long story", "max_tokens": 150, "ignore_eos": True}


def test_overload_1_running_1_queued(server_model, tmp_path):
    s = start_server(server_model, tmp_path, "--max-num-seqs", "1", "--max-queued-requests", "1")
    try:
        async def one(c):
            t0 = time.monotonic()
            r = await c.post(s.url("/v1/completions"), json=LONG, headers={"Authorization": f"Bearer {API_KEY}"})
            return r, time.monotonic() - t0

        async def all_():
            async with httpx.AsyncClient(timeout=120) as c:
                first = [asyncio.create_task(one(c)) for _ in range(2)]
                await asyncio.sleep(0.5)  # both admitted (1 running, 1 queued)
                rest = await asyncio.gather(*(one(c) for _ in range(8)))
                return list(rest) + list(await asyncio.gather(*first))

        results = asyncio.run(all_())
        ok = [r for r, _ in results if r.status_code == 200]
        refused = [(r, dt) for r, dt in results if r.status_code in (429, 503)]
        assert len(ok) == 2 and len(refused) == 8, [r.status_code for r, _ in results]
        for r, dt in refused:
            assert dt < 2.0 and r.headers.get("retry-after") and r.json()["error"]["type"]
    finally:
        assert s.stop() == 0


def test_kv_exhaustion_preempts_and_changes_no_answer(server_model, tmp_path):
    """RELIABILITY.md battery 8: 6 concurrent greedy requests of 48-68 tokens (3-5 blocks of 16; 23 in all)
    against a pool of 10 blocks a cache group."""
    prompts = [f"story {i} " + "once upon a time " * (i + 1) for i in range(6)]
    s = start_server(server_model, tmp_path, "--num-kv-blocks", "10", "--max-model-len", "256")
    try:
        async def one(c, p):
            r = await c.post(s.url("/v1/completions"), headers={"Authorization": f"Bearer {API_KEY}"},
                             json={"model": "tiny", "prompt": p, "max_tokens": 40, "temperature": 0,
                                   "ignore_eos": True})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        async def all_():
            async with httpx.AsyncClient(timeout=300) as c:
                return await asyncio.gather(*(one(c, p) for p in prompts))

        got = asyncio.run(all_())
        assert s.metrics()["oss_engine_num_preemptions_total"] > 0
    finally:
        assert s.stop() == 0
    llm = LLM(str(server_model), dtype="float32", device="cpu", progress=False, max_model_len=256)
    want = [o.outputs[0].text for o in llm.generate(prompts, SamplingParams(max_tokens=40, temperature=0,
                                                                           ignore_eos=True))]
    assert got == want


def test_sigterm_drains_in_flight_requests(server_model, tmp_path):
    s = start_server(server_model, tmp_path, "--shutdown-timeout", "60")

    async def run():
        async with httpx.AsyncClient(timeout=120) as c:
            tasks = [asyncio.create_task(c.post(s.url("/v1/completions"), json=LONG,
                                                headers={"Authorization": f"Bearer {API_KEY}"}))
                     for _ in range(4)]
            await asyncio.sleep(1.0)
            s.proc.send_signal(signal.SIGTERM)
            return await asyncio.gather(*tasks)

    results = asyncio.run(run())
    assert [r.status_code for r in results] == [200] * 4
    assert all(r.json()["usage"]["completion_tokens"] == 150 for r in results)
    assert s.proc.wait(timeout=60) == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/net"), reason="needs /proc")
def test_only_the_api_port_listens(server):
    pid = server.proc.pid
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    listening = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A" and parts[9] in inodes:  # LISTEN
                    listening.append(int(parts[1].split(":")[1], 16))
    assert listening == [int(server.base.rsplit(":", 1)[1])]
