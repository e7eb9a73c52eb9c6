"""Hugging Face transformers' GptOssForCausalLM on the same weights as our model, for `bench --compare hf`.

The HF model is built in bf16 with dense experts (its MXFP4 path needs a kernel download this machine cannot
make), filled from our parameters (MXFP4 experts dequantized exactly; HF stores experts input-major,
[E, in, out], ours output-major), and timed on greedy decode at batch 1 with its default dynamic cache:
rate = new tokens / seconds of `generate`, the median of 3 after a short untimed run.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from ..weights.mxfp4 import dequantize_mxfp4
from .hardware import sync


def hf_bytes_needed(llm) -> int:
    """bf16 bytes of the dense HF model (experts upcast from MXFP4)."""
    m = llm.config.model
    experts = m.num_hidden_layers * m.num_local_experts * 3 * m.hidden_size * m.intermediate_size
    others = sum(p.numel() for n, p in llm.model.named_parameters() if ".experts." not in n)
    return 2 * (experts + others)


def _hf_tensors(llm) -> Iterator[tuple[str, torch.Tensor]]:
    """Our parameters under HF's names and layouts (tensors on our device), one at a time: a layer's MXFP4
    experts are dequantized only when reached, so at most one layer's bf16 experts exist beside the HF model
    (all of them at once, ~38 GB for gpt-oss-20b, ran an 80 GB H100 out of memory)."""
    m, model = llm.config.model, llm.model
    H, K, hd = m.num_attention_heads, m.num_key_value_heads, m.head_dim
    yield from (("model.embed_tokens.weight", model.embed.weight), ("model.norm.weight", model.norm.weight),
                ("lm_head.weight", model.lm_head.weight))
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", layer.input_norm.weight
        yield p + "post_attention_layernorm.weight", layer.post_attn_norm.weight
        a = layer.attn
        for name, w in zip(("q", "k", "v"), a.qkv.weight.split([H * hd, K * hd, K * hd])):
            yield p + f"self_attn.{name}_proj.weight", w
        for name, b in zip(("q", "k", "v"), a.qkv.bias.split([H * hd, K * hd, K * hd])):
            yield p + f"self_attn.{name}_proj.bias", b
        yield p + "self_attn.o_proj.weight", a.o_proj.weight
        yield p + "self_attn.o_proj.bias", a.o_proj.bias
        yield p + "self_attn.sinks", a.sinks
        yield p + "mlp.router.weight", layer.mlp.router.weight
        yield p + "mlp.router.bias", layer.mlp.router.bias
        for hf_name, w in zip(("gate_up_proj", "down_proj"), layer.mlp.experts.weights()):
            w = w.standard()  # the kernels' tiled bytes (weights/tiles.py) back in the checkpoint's layout
            dense = dequantize_mxfp4(w.blocks, w.scales, torch.bfloat16) if w.is_mxfp4 else w.dense  # [E, out, in]
            yield p + f"mlp.experts.{hf_name}", dense.transpose(1, 2)  # [E, in, out]
            del dense
            yield p + f"mlp.experts.{hf_name}_bias", w.bias


def build_hf(llm):
    import json
    from pathlib import Path

    import transformers

    raw = json.loads((Path(llm.config.model_dir) / "config.json").read_text())
    raw.pop("quantization_config", None)
    cfg = transformers.GptOssConfig(**raw)
    cfg._attn_implementation = "eager"  # its SDPA path drops the sinks; eager is what the parity tests use
    with torch.device("meta"):
        hf = transformers.GptOssForCausalLM(cfg)
    # cast on the meta device, then allocate: bf16 from the start (a float32 model first would need twice
    # hf_bytes_needed, more than an 80 GB card holds for gpt-oss-20b)
    hf = hf.to(torch.bfloat16).to_empty(device=llm.engine.runner.device)
    state = dict(hf.named_parameters())
    filled = set()
    with torch.no_grad():
        for name, t in _hf_tensors(llm):
            state[name].copy_(t)
            filled.add(name)
        missing = sorted(set(state) - filled)
        if missing:
            raise RuntimeError(f"no value for HF parameter(s) {missing[:3]}")
        for name, module in hf.named_modules():  # rotary tables: to_empty left them undefined and the bf16
            if name.endswith("rotary_emb"):     # cast would round them; rebuild them in float32
                fresh = type(module)(module.config)  # on the CPU, from the config
                for bname, buf in list(module.named_buffers()):
                    setattr(module, bname, getattr(fresh, bname).to(buf.device))
    return hf.eval()


def hf_decode_rate(hf, vocab: int, prompt_len: int, new_tokens: int, reps: int = 3) -> list[float]:
    """Tokens a second of `reps` timed greedy `generate` calls (after a short untimed one), in the order they ran;
    the bench reports their median."""
    dev = next(hf.parameters()).device
    ids = torch.randint(0, vocab, (1, prompt_len), device=dev)
    kw = dict(do_sample=False, min_new_tokens=new_tokens, max_new_tokens=new_tokens, pad_token_id=0)
    rates = []
    with torch.no_grad():
        hf.generate(ids, **{**kw, "min_new_tokens": 4, "max_new_tokens": 4})
        for _ in range(reps):
            sync(dev)
            t0 = time.perf_counter()
            hf.generate(ids, **kw)
            sync(dev)
            rates.append(new_tokens / (time.perf_counter() - t0))
    return rates
