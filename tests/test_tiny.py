"""Tiny checkpoints: the Hugging Face layout that transformers loads, determinism, sharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from oss_engine.tiny import make_tiny_checkpoint
from oss_engine.weights.checkpoint import INDEX_FILE, Checkpoint
from oss_engine.weights.mxfp4 import dequantize_mxfp4

transformers = pytest.importorskip("transformers")

SMALL = dict(num_layers=2, vocab_size=1024, write_tokenizer=False)
PROMPT = torch.tensor([[5, 17, 300, 2, 911, 64, 8, 8, 1000, 3, 42, 7]])  # [1, T], T > sliding_window


def _load_hf(model_dir: Path):
    # MXFP4: ask for the dequantized experts outright. Left to choose, transformers 5.25 on a CPU machine
    # fetches its MXFP4 kernels from the Hub (no network here); the dequantized load reads the same tensors.
    config = json.loads((Path(model_dir) / "config.json").read_text())
    mxfp4 = config.get("quantization_config", {}).get("quant_method") == "mxfp4"
    kwargs = {"quantization_config": transformers.Mxfp4Config(dequantize=True)} if mxfp4 else {}
    model, info = transformers.GptOssForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, output_loading_info=True, **kwargs
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not info["error_msgs"], info
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits  # [1, T, V]


def _expected_shapes(fmt: str, L=2, V=1024, D=64, I=64, E=8, H=4, K=2, hd=32) -> dict[str, tuple]:
    """GPT_OSS_SPEC.md section 4: name -> (dtype, shape)."""
    bf16, u8 = torch.bfloat16, torch.uint8
    out = {"model.embed_tokens.weight": (bf16, (V, D)), "model.norm.weight": (bf16, (D,)),
           "lm_head.weight": (bf16, (V, D))}
    for n in range(L):
        p = f"model.layers.{n}."
        out |= {
            p + "input_layernorm.weight": (bf16, (D,)),
            p + "post_attention_layernorm.weight": (bf16, (D,)),
            p + "self_attn.q_proj.weight": (bf16, (H * hd, D)), p + "self_attn.q_proj.bias": (bf16, (H * hd,)),
            p + "self_attn.k_proj.weight": (bf16, (K * hd, D)), p + "self_attn.k_proj.bias": (bf16, (K * hd,)),
            p + "self_attn.v_proj.weight": (bf16, (K * hd, D)), p + "self_attn.v_proj.bias": (bf16, (K * hd,)),
            p + "self_attn.o_proj.weight": (bf16, (D, H * hd)), p + "self_attn.o_proj.bias": (bf16, (D,)),
            p + "self_attn.sinks": (bf16, (H,)),
            p + "mlp.router.weight": (bf16, (E, D)), p + "mlp.router.bias": (bf16, (E,)),
            p + "mlp.experts.gate_up_proj_bias": (bf16, (E, 2 * I)),
            p + "mlp.experts.down_proj_bias": (bf16, (E, D)),
        }
        if fmt == "mxfp4":
            out |= {
                p + "mlp.experts.gate_up_proj_blocks": (u8, (E, 2 * I, D // 32, 16)),
                p + "mlp.experts.gate_up_proj_scales": (u8, (E, 2 * I, D // 32)),
                p + "mlp.experts.down_proj_blocks": (u8, (E, D, I // 32, 16)),
                p + "mlp.experts.down_proj_scales": (u8, (E, D, I // 32)),
            }
        else:
            out |= {
                p + "mlp.experts.gate_up_proj": (bf16, (E, D, 2 * I)),
                p + "mlp.experts.down_proj": (bf16, (E, I, D)),
            }
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    return {fmt: make_tiny_checkpoint(tmp_path_factory.mktemp(f"small-{fmt}"), fmt=fmt, **SMALL)
            for fmt in ("mxfp4", "bf16")}


@pytest.mark.parametrize("fmt", ["mxfp4", "bf16"])
def test_tensors_match_the_spec_layout(small, fmt):
    expected = _expected_shapes(fmt)
    with Checkpoint.open(small[fmt]) as ckpt:
        assert set(ckpt.names()) == set(expected)
        for name, (dtype, shape) in expected.items():
            meta = ckpt.meta(name)
            assert (meta.dtype, meta.shape) == (dtype, shape), name
            tensor = ckpt.read(name)
            assert torch.isfinite(tensor.float()).all() and tensor.float().abs().sum() > 0, name


def test_bf16_experts_are_the_dequantized_mxfp4_experts(small):
    with Checkpoint.open(small["mxfp4"]) as q, Checkpoint.open(small["bf16"]) as b:
        for n in range(2):
            x = f"model.layers.{n}.mlp.experts."
            for proj in ("gate_up_proj", "down_proj"):
                w = dequantize_mxfp4(q.read(x + proj + "_blocks"), q.read(x + proj + "_scales"))  # [E, out, in]
                assert torch.equal(b.read(x + proj).float(), w.transpose(1, 2))  # stored [E, in, out]
        shared = [name for name in q.names() if not name.endswith(("_blocks", "_scales"))]
        for name in shared:
            assert torch.equal(q.read(name), b.read(name)), name


def test_config_matches_the_published_layout(small):
    config = json.loads((small["mxfp4"] / "config.json").read_text())
    assert config["model_type"] == "gpt_oss" and config["architectures"] == ["GptOssForCausalLM"]
    assert config["layer_types"] == ["sliding_attention", "full_attention"]
    assert config["num_experts_per_tok"] == config["experts_per_token"] == 2
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                                      "original_max_position_embeddings": 64, "truncate": False}
    assert config["max_position_embeddings"] == 2048 and config["initial_context_length"] == 64
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert "quantization_config" not in json.loads((small["bf16"] / "config.json").read_text())
    hf = transformers.AutoConfig.from_pretrained(small["mxfp4"])
    assert hf.rope_parameters["factor"] == 32.0 and hf.rope_parameters["truncate"] is False
    assert hf.rope_parameters["rope_theta"] == 150000
    assert hf.num_local_experts == 8 and hf.sliding_window == 8 and hf.swiglu_limit == 7.0


def test_full_vocab_config_keeps_the_published_token_ids(tmp_path):
    out = make_tiny_checkpoint(tmp_path, fmt="bf16", num_layers=1, num_experts=2, experts_per_token=1,
                               write_tokenizer=False)
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["eos_token_id"], config["pad_token_id"]) == (201088, 200002, 199999)
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 199998, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}
    model = _load_hf(out)
    assert torch.isfinite(_logits(model)).all()


def test_transformers_loads_both_formats_to_the_same_model(small):
    logits = {fmt: _logits(_load_hf(path)) for fmt, path in small.items()}
    assert logits["mxfp4"].shape == (1, PROMPT.shape[1], 1024)
    assert torch.isfinite(logits["mxfp4"]).all()
    assert logits["mxfp4"].std() > 0.1  # not degenerate
    torch.testing.assert_close(logits["mxfp4"], logits["bf16"], rtol=0, atol=1e-5)


def test_greedy_decoding_is_varied(small):
    model = _load_hf(small["bf16"])
    with torch.no_grad():
        out = model.generate(PROMPT[:, :3], max_new_tokens=16, do_sample=False)
    new = out[0, 3:].tolist()
    assert len(set(new)) > 8, new


def test_sharded_checkpoint_has_a_complete_index_and_loads(tmp_path, small):
    out = make_tiny_checkpoint(tmp_path, fmt="mxfp4", max_shard_bytes=100_000, **SMALL)
    index = json.loads((out / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(p.name for p in out.glob("*.safetensors")) == shards
    with Checkpoint.open(out) as sharded, Checkpoint.open(small["mxfp4"]) as single:
        assert sorted(index["weight_map"]) == single.names() == sharded.names()
        total = 0
        for name in single.names():
            tensor = sharded.read(name)
            assert torch.equal(tensor, single.read(name)), name
            total += tensor.numel() * tensor.element_size()
    assert index["metadata"]["total_size"] == total
    torch.testing.assert_close(_logits(_load_hf(out)), _logits(_load_hf(small["mxfp4"])), rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["mxfp4", "bf16"])
def test_same_seed_gives_identical_files(tmp_path, small, fmt):
    again = make_tiny_checkpoint(tmp_path / "again", fmt=fmt, **SMALL)
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert (again / name).read_bytes() == (small[fmt] / name).read_bytes(), name
    other = make_tiny_checkpoint(tmp_path / "other", fmt=fmt, seed=1, **SMALL)
    assert (other / "model.safetensors").read_bytes() != (small[fmt] / "model.safetensors").read_bytes()


def test_refuses_bad_arguments_and_occupied_directories(tmp_path, small):
    with pytest.raises(ValueError, match="fmt"):
        make_tiny_checkpoint(tmp_path / "a", fmt="fp8", **SMALL)
    with pytest.raises(ValueError, match="multiples of 32"):
        make_tiny_checkpoint(tmp_path / "b", hidden_size=48, **SMALL)
    with pytest.raises(FileExistsError):
        make_tiny_checkpoint(small["bf16"], fmt="bf16", **SMALL)


def test_writes_tokenizer_files(tmp_path):
    pytest.importorskip("oss_engine.chat.tokenizer_files")
    out = make_tiny_checkpoint(tmp_path, fmt="bf16", num_layers=1, num_experts=2, experts_per_token=1)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
