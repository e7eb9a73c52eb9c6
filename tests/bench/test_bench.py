"""`oss-engine bench`: the roofline arithmetic against PERFORMANCE.md's worked figures, the transformers twin's
weights against our model, and a whole (tiny, CPU) run through the CLI with its JSON."""

from __future__ import annotations

import json

import pytest
import torch

from oss_engine import LLM
from oss_engine.bench import roofline
from oss_engine.bench.hf_compare import build_hf
from oss_engine.cli import main
from oss_engine.config import ModelConfig
from oss_engine.presets import write_preset_config


def preset(name: str, tmp_path) -> ModelConfig:
    return ModelConfig.from_dir(write_preset_config(tmp_path, name))


@pytest.mark.parametrize("name, gb, limit", [("gpt-oss-20b", 3.71, 810), ("gpt-oss-120b", 5.00, 595)])
def test_batch1_bytes_match_performance_md(tmp_path, name, gb, limit):
    m = preset(name, tmp_path)
    step = roofline.decode_step_bytes(m, 1, 1024)
    assert step.attention / m.num_hidden_layers == pytest.approx(53.1e6, rel=0.01)
    assert step.experts / m.num_hidden_layers == pytest.approx(53.0e6, rel=0.01)
    assert step.total / 1e9 == pytest.approx(gb, rel=0.02)  # PERFORMANCE.md's total leaves out the ~28 MB of KV
    assert roofline.decode_limit_tok_s(m, 1, 1024, 3.0e12) == pytest.approx(limit, rel=0.03)


def test_experts_touched_120b(tmp_path):
    m = preset("gpt-oss-120b", tmp_path)
    assert [round(roofline.experts_touched(m, b)) for b in (1, 8, 64)] == [4, 29, 111]


def test_prefill_flops_are_twice_the_active_matmul_weights(tmp_path):
    m = preset("gpt-oss-20b", tmp_path)
    flops = roofline.prefill_flops_per_token(m, 1)  # one token: attention over one key only
    assert flops / 2 == pytest.approx(3.6e9 - 0.58e9, rel=0.05)  # 3.6B active minus the unembedding


def test_transformers_twin_gets_our_weights(parity_checkpoint):
    fmt, path = parity_checkpoint
    llm = LLM(str(path), device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False)
    hf = build_hf(llm)
    assert {p.dtype for p in hf.parameters()} == {torch.bfloat16}  # the dtype the bench times it in
    rotary = [b for n, b in hf.named_buffers() if "rotary" in n]
    assert rotary and all(b.dtype == torch.float32 for b in rotary)  # rebuilt in float32, not rounded
    hf = hf.float()
    ids = torch.randint(0, llm.config.model.vocab_size, (1, 24), generator=torch.Generator().manual_seed(0))
    from tests.model.model_runs import our_logits

    want = our_logits(llm, ids[0].tolist())
    with torch.no_grad():
        got = hf(ids).logits[0].float()
    assert ((got - want).norm() / want.norm()).item() < 1e-4


def test_transformers_twin_dequantizes_one_layer_at_a_time(parity_checkpoint, monkeypatch):
    """The MXFP4 experts are dequantized when their HF tensor is next, not all up front: at most one layer's
    bf16 experts beside the HF model (all at once ran an 80 GB H100 out of memory for gpt-oss-20b)."""
    import oss_engine.bench.hf_compare as hfc

    fmt, path = parity_checkpoint
    if fmt != "mxfp4":
        pytest.skip("bf16 experts are used as stored")
    llm = LLM(str(path), device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False)
    events = []
    real = hfc.dequantize_mxfp4
    monkeypatch.setattr(hfc, "dequantize_mxfp4", lambda *a: events.append("dequantize") or real(*a))
    for name, _ in hfc._hf_tensors(llm):
        events.append(name)
    layers = llm.config.model.num_hidden_layers
    assert events.count("dequantize") == 2 * layers
    for i, e in enumerate(events):
        if e == "dequantize":  # each is followed at once by the experts tensor made from it
            assert events[i + 1].endswith(("mlp.experts.gate_up_proj", "mlp.experts.down_proj")), events[i + 1]
    assert events.index("dequantize") > events.index("model.layers.0.mlp.router.bias")


def test_cli_bench_tiny_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--device", "cpu", "--batch-sizes", "1,3", "--context", "24", "--decode-steps", "4",
               "--decode-warmup", "1", "--prefill-lens", "32", "--prefill-tokens", "64", "--ttft-len", "16",
               "--kernels", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [d["batch"] for d in res["decode"]] == [1, 3]
    assert all(d["tok_s"] > 0 and 0 < d["roofline_fraction"] for d in res["decode"])
    pre = res["prefill"][0]
    assert pre["prompt_len"] == 32 and len(pre["passes_tok_s"]) == 3 and min(pre["passes_tok_s"]) > 0
    assert pre["tok_s"] == sorted(pre["passes_tok_s"])[1]  # the median of the timed passes
    assert res["ttft_ms"] > 0 and res["kv_capacity_tokens"] > 0 and res["copy_bandwidth_GBs"] > 0
    assert {(k["layer"], k["tokens"]) for k in res["layers"]} >= {("moe", 1), ("attention", 2048)}
    table = capsys.readouterr().out
    assert "decode batch 3, ctx 24" in table and "time to first token" in table and "(median of " in table


def test_cli_bench_compare_hf_on_cpu(tmp_path, capsys):
    out = tmp_path / "bench-hf.json"
    rc = main(["bench", "--device", "cpu", "--batch-sizes", "1", "--context", "16", "--decode-steps", "2",
               "--decode-warmup", "1", "--prefill-lens", "", "--ttft-len", "8", "--compare", "hf",
               "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    hf = res["hf"]
    assert len(hf["passes_tok_s"]) == 3 and min(hf["passes_tok_s"]) > 0
    assert hf["decode_batch1_tok_s"] == sorted(hf["passes_tok_s"])[1]  # the median of the timed passes
    assert hf["ratio"] == pytest.approx(res["decode"][0]["tok_s"] / hf["decode_batch1_tok_s"])
    assert "transformers: " in capsys.readouterr().out


def test_preset_needs_random_weights():
    with pytest.raises(SystemExit, match="--random-weights"):
        main(["bench", "--preset", "gpt-oss-20b", "--device", "cpu"])


def test_cli_bench_refuses_nccl_on_cpu(capsys):
    rc = main(["bench", "--device", "cpu", "-tp", "2", "--distributed-backend", "nccl", "--batch-sizes", "2",
               "--context", "16", "--prefill-lens", "16", "--ttft-len", "8"])
    assert rc == 2 and "use 'gloo' on CPU" in capsys.readouterr().err


def test_cli_bench_tensor_parallel_2_on_cpu(tmp_path):
    out = tmp_path / "bench-tp2.json"
    rc = main(["bench", "--device", "cpu", "--tensor-parallel-size", "2", "--distributed-backend", "gloo",
               "--batch-sizes", "2", "--context", "16",
               "--decode-steps", "2", "--decode-warmup", "1", "--prefill-lens", "16", "--prefill-tokens", "32",
               "--ttft-len", "8", "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["tensor_parallel_size"] == 2 and len(res["weight_bytes_per_rank"]) == 2
    assert res["collective_backend"] == "gloo"
    assert res["decode"][0]["tok_s"] > 0 and res["prefill"][0]["tok_s"] > 0
