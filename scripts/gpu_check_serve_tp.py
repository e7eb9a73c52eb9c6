"""GPU machine (issue 6): `oss-engine serve --tensor-parallel-size N` answers a chat request, and SIGTERM ends it
with status 0 and no process of it left. The tiny checkpoint (with the o200k_harmony tokenizer), bf16
(`--device cpu`: float32 over gloo, to try the script on any machine).

    PYTHONPATH=. python scripts/gpu_check_serve_tp.py --tp 2 [--ep]

The ranks meet over NCCL when there is a GPU a rank, else over gloo with the ranks sharing the GPUs
(`--distributed-backend gloo`). The server stack (fastapi, uvicorn, pydantic, openai-harmony) is not on the GPU
image: carry its wheels as the device README says. Prints the answer, the exit status and PASS or FAIL."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

import httpx
import psutil
import torch

from oss_engine.parallel.launch import free_port
from oss_engine.tiny import make_tiny_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tp", type=int, default=2)
    ap.add_argument("--ep", action="store_true", help="with expert parallel")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (gloo, float32) to try the script anywhere")
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    backend = "nccl" if cuda and torch.cuda.device_count() >= args.tp else "gloo"
    port = free_port("127.0.0.1")
    with tempfile.TemporaryDirectory() as d:
        make_tiny_checkpoint(d, seed=0, num_layers=2)
        cmd = [sys.executable, "-m", "oss_engine", "serve", "--model", d, "--port", str(port),
               "--device", args.device, "--dtype", "bfloat16" if cuda else "float32", "--served-model-name", "tiny",
               "--tensor-parallel-size", str(args.tp), "--distributed-backend", backend, "--max-model-len", "512",
               "--num-kv-blocks", "128", "--shutdown-timeout", "10",
               *(["--enable-expert-parallel"] if args.ep else [])]
        log_path = os.path.join(d, "server.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        ok = False
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            tree = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
            print(f"serve -tp {args.tp}{' + EP' if args.ep else ''} ({backend}): {len(tree)} child processes",
                  flush=True)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=120,
                           json={"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                                 "max_tokens": 12, "temperature": 0})
            body = r.json()
            print(f"chat: HTTP {r.status_code}, {body.get('choices', [{}])[0].get('message')}, "
                  f"usage {body.get('usage')}", flush=True)
            answered = r.status_code == 200 and body["usage"]["completion_tokens"] > 0
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=60)
            time.sleep(1)
            left = [p.pid for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            print(f"SIGTERM: exit {rc} after {time.monotonic() - t0:.1f} s; processes left: {left}", flush=True)
            ok = answered and rc == 0 and not left
        finally:
            if proc.poll() is None:
                proc.kill()
            if not ok:
                with open(log_path, errors="replace") as f:
                    print(f.read()[-4000:])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
