"""`oss-engine`: argparse -> LLM / make-tiny. No logic beyond wiring."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .config import COLLECTIVE_BACKENDS, LaunchEnv, launch_env
from .parallel.launch import WorkerFailed


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="checkpoint directory (Hugging Face layout); default: the embedded tiny random model")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="compute dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--max-model-len", type=int, default=None, help="longest prompt + output, in tokens")
    p.add_argument("--seed", type=int, default=0, help="seed for unseeded sampling")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (decode steps run eagerly)")
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                   help="read each step's sampled tokens before scheduling the next (default: a step later, "
                        "overlapping the host's work with the GPU's)")
    par = p.add_argument_group("parallelism (one process per rank, started here or by torchrun)")
    par.add_argument("--tensor-parallel-size", "-tp", type=int, default=1,
                     help="ranks splitting attention heads, the vocabulary and (without EP) the MoE")
    par.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1, help="pipeline stages (layers)")
    par.add_argument("--data-parallel-size", "-dp", type=int, default=1,
                     help="engine replicas, requests balanced by load; the MoE spans tp x dp ranks")
    par.add_argument("--enable-expert-parallel", action="store_true",
                     help="split the MoE by whole experts over tp x dp ranks instead of by intermediate slices")
    par.add_argument("--distributed-executor-backend", default="auto",
                     choices=["auto", "uni", "mp", "external_launcher"],
                     help="auto: external_launcher under torchrun (every rank runs this same command; rank 0 "
                          "serves, the others run the worker loop), else mp for several ranks and uni for one; "
                          "mp at world size 1 still runs the multi-process path (a process group of one)")
    par.add_argument("--distributed-backend", default="auto", choices=COLLECTIVE_BACKENDS,
                     help="auto: NCCL on CUDA (a GPU a rank), gloo on CPU; gloo on CUDA lets tensor- and "
                          "expert-parallel ranks share a GPU (a correctness check, not a fast path)")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oss-engine", description="Run OpenAI's gpt-oss models.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete one prompt and print the text",
                       description="Complete PROMPT with the model and print the generated text.")
    _add_model_args(g)
    _add_sampling_args(g, max_tokens=64)
    g.add_argument("prompt", help="the text to complete")

    c = sub.add_parser("chat", help="interactive chat in the harmony format",
                       description="Chat with the model; reasoning is shown apart from the answer. "
                                   "Reads one user message a line; an empty line or EOF ends the chat.")
    _add_model_args(c)
    _add_sampling_args(c, max_tokens=1024)
    c.add_argument("--reasoning-effort", default="medium", choices=["low", "medium", "high"])
    c.add_argument("--system", default=None, help="instructions for the model (a developer message)")

    s = sub.add_parser("serve", help="the OpenAI-compatible HTTP server",
                       description="Serve the model over the OpenAI API (chat completions with harmony, "
                                   "completions, responses, models, health, metrics).")
    _add_model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health")
    s.add_argument("--served-model-name", default=None, help="the model name clients use (default: the --model "
                   "argument, or 'tiny-gpt-oss' for the embedded model)")
    s.add_argument("--max-num-seqs", type=int, default=256, help="requests computed at once")
    s.add_argument("--max-num-batched-tokens", type=int, default=8192, help="tokens computed per step")
    s.add_argument("--max-queued-requests", type=int, default=256,
                   help="requests waiting beyond the running ones; more get 429")
    s.add_argument("--shutdown-timeout", type=float, default=30.0, help="seconds to finish in-flight requests "
                   "after SIGTERM")
    s.add_argument("--block-size", type=int, default=16)
    s.add_argument("--no-enable-prefix-caching", dest="enable_prefix_caching", action="store_false")
    s.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    s.add_argument("--kv-cache-memory-bytes", type=int, default=None)
    s.add_argument("--num-kv-blocks", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--max-request-bytes", type=int, default=4 << 20, help="larger request bodies get 413")

    b = sub.add_parser("bench", help="measure decode and prefill rates against this GPU's ceilings",
                       description="Benchmark the engine: decode tok/s by batch (with roofline fractions), "
                                   "prefill tok/s, time to first token, memory; optionally single layers and "
                                   "Hugging Face transformers on the same weights.")
    from .bench.main import add_arguments

    add_arguments(b)

    t = sub.add_parser("make-tiny", help="write a tiny random gpt-oss checkpoint",
                       description="Write a small random checkpoint in the exact Hugging Face layout "
                                   "(config, weights, tokenizer files; vocab 201088).")
    t.add_argument("dir", help="output directory")
    t.add_argument("--format", default="mxfp4", choices=["mxfp4", "bf16"], help="expert weight format")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--layers", type=int, default=4)
    t.add_argument("--experts", type=int, default=8)
    t.add_argument("--max-shard-bytes", type=int, default=None, help="split into shards with an index")
    return parser


def _llm(args: argparse.Namespace):
    from .llm import LLM

    return LLM(args.model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len, seed=args.seed,
               enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling, **_parallel_kwargs(args))


def _parallel_kwargs(args: argparse.Namespace) -> dict:
    return dict(tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
                data_parallel_size=args.data_parallel_size, enable_expert_parallel=args.enable_expert_parallel,
                distributed_executor_backend=args.distributed_executor_backend,
                distributed_backend=args.distributed_backend)


def _params(args: argparse.Namespace):
    from .sampling_params import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                          top_k=args.top_k)


def cmd_generate(args: argparse.Namespace) -> int:
    with _llm(args) as llm:
        out = llm.generate(args.prompt, _params(args))[0]
    print(out.outputs[0].text)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    with _llm(args) as llm:
        return _chat_loop(args, llm, _params(args))


def _chat_loop(args: argparse.Namespace, llm, params) -> int:
    history = [{"role": "developer", "content": args.system}] if args.system else []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or not line.strip():
            return 0
        history.append({"role": "user", "content": line.rstrip("\n")})
        comp = llm.chat(history, params, reasoning_effort=args.reasoning_effort)[0].outputs[0]
        if comp.reasoning:
            print(f"[reasoning] {comp.reasoning}")
        for call in comp.tool_calls:
            print(f"[tool call] {call.name}({call.arguments})")
        print(f"assistant> {comp.text}", flush=True)
        history.append({"role": "assistant", "content": comp.text})


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from .tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(args.dir, fmt=args.format, seed=args.seed, num_layers=args.layers,
                                num_experts=args.experts, max_shard_bytes=args.max_shard_bytes)
    print(f"wrote a tiny random gpt-oss checkpoint ({args.format}) to {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .defaults import default_model_dir
    from .server.context import ServerSettings
    from .server.serve import ServeOptions, serve

    model = args.model or str(default_model_dir())
    name = args.served_model_name or (args.model if args.model else "tiny-gpt-oss")
    llm_kwargs = dict(model=model, dtype=args.dtype, device=args.device, max_model_len=args.max_model_len,
                      seed=args.seed, max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                      block_size=args.block_size, enable_prefix_caching=args.enable_prefix_caching,
                      gpu_memory_utilization=args.gpu_memory_utilization,
                      kv_cache_memory_bytes=args.kv_cache_memory_bytes, num_kv_blocks=args.num_kv_blocks,
                      enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling,
                      **_parallel_kwargs(args))
    from .config import ModelConfig

    mcfg = ModelConfig.from_dir(model)  # fail fast on a bad directory, before the server starts
    settings = ServerSettings(served_model_name=name, max_model_len=args.max_model_len or mcfg.max_position_embeddings,
                              api_key=args.api_key, max_request_bytes=args.max_request_bytes,
                              max_queued_requests=args.max_queued_requests, shutdown_timeout=args.shutdown_timeout)
    return serve(ServeOptions(args.host, args.port, settings, llm_kwargs))


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench.main import main as bench_main

    return bench_main(args)


COMMANDS = {"generate": cmd_generate, "chat": cmd_chat, "serve": cmd_serve, "make-tiny": cmd_make_tiny,
            "bench": cmd_bench}


def _torchrun_worker(args: argparse.Namespace, env: LaunchEnv | None) -> bool:
    """Whether this process is a rank > 0 that torchrun started for a model command: it runs the worker loop."""
    return (env is not None and env.rank > 0 and args.command in ("generate", "chat", "serve")
            and args.distributed_executor_backend in ("auto", "external_launcher"))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = launch_env()
    rank = f"rank {env.rank} " if env is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {rank}%(name)s: %(message)s", stream=sys.stderr)
    try:
        if _torchrun_worker(args, env):
            from .config import resolve_collective_backend, resolve_device
            from .parallel.torchrun import run_worker

            device = resolve_device(args.device)
            return run_worker(env, device, resolve_collective_backend(args.distributed_backend, device))
        return COMMANDS[args.command](args)
    except (ValueError, OSError) as e:  # configuration, checkpoint and input errors: a clear line, no traceback
        print(f"oss-engine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except WorkerFailed as e:  # a parallel worker died: say which, no traceback
        print(f"oss-engine {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
