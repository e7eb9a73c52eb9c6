"""The LLM API: text and token-id prompts, sampling controls, logprobs, stops, chat."""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM, SamplingParams
from oss_engine.chat.harmony import HarmonyRenderer
from oss_engine.engine.sampler import SampleResult
from oss_engine.tiny import make_tiny_checkpoint

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_with_tokenizer):
    return LLM(str(tiny_with_tokenizer), device="cpu", progress=False)


def test_text_prompt_round_trip(llm):
    out = llm.generate("The capital of France is", GREEDY)[0]
    assert out.prompt == "The capital of France is"
    assert out.prompt_token_ids == llm.tokenizer.encode("The capital of France is")
    comp = out.outputs[0]
    assert len(comp.token_ids) == 12 and comp.finish_reason == "length"
    assert comp.text == llm.tokenizer.decode(comp.token_ids)


def test_batch_equals_alone_and_order_kept(llm):
    prompts = ["one", "a much longer prompt with several more words in it", "three"]
    batch = llm.generate(prompts, GREEDY)
    assert [o.prompt for o in batch] == prompts
    for p, o in zip(prompts, batch):
        assert llm.generate(p, GREEDY)[0].outputs[0].token_ids == o.outputs[0].token_ids


def test_seed_reproducible_alone_and_in_a_batch(llm):
    seeded = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    alone = llm.generate(["hello"], seeded)[0].outputs[0].token_ids
    mixed = llm.generate(["other prompt", "hello", "x"], seeded)
    assert mixed[1].outputs[0].token_ids == alone
    other_seed = llm.generate(["hello"], SamplingParams(max_tokens=10, seed=99, ignore_eos=True))[0]
    assert other_seed.outputs[0].token_ids != alone


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate("abc", GREEDY)[0].outputs[0].token_ids
    topk1 = llm.generate("abc", SamplingParams(max_tokens=12, top_k=1, seed=5, ignore_eos=True))[0]
    assert topk1.outputs[0].token_ids == greedy


def test_generation_logprobs_agree_with_prompt_logprobs(llm):
    """The decode path's logprobs equal the prefill path's for the same tokens (KV cache correctness)."""
    out = llm.generate("logprobs please", SamplingParams(max_tokens=6, temperature=0.0, logprobs=3,
                                                          ignore_eos=True))[0]
    comp = out.outputs[0]
    assert len(comp.logprobs) == 6
    for tok, lp in zip(comp.token_ids, comp.logprobs):
        assert tok in lp and len(lp) == 3  # greedy: the sampled token is among the top 3
        assert lp[tok] == max(lp.values()) and all(v <= 0 for v in lp.values())
    full = out.prompt_token_ids + comp.token_ids
    again = llm.generate(prompt_token_ids=[full], sampling_params=SamplingParams(max_tokens=1, prompt_logprobs=2))[0]
    P = len(out.prompt_token_ids)
    assert again.prompt_logprobs[0] is None and len(again.prompt_logprobs) == len(full)
    for i, tok in enumerate(comp.token_ids):
        entry = again.prompt_logprobs[P + i]
        assert tok in entry and len(entry) >= 2
        assert entry[tok] == pytest.approx(comp.logprobs[i][tok], abs=1e-4)


def test_stop_string_spanning_tokens_is_cut(llm):
    base = llm.generate("stop strings", SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))[0]
    comp = base.outputs[0]
    # a stop string made of the end of token 4 and the start of token 5
    t4, t5 = (llm.tokenizer.decode([t]) for t in comp.token_ids[4:6])
    assert t4 and t5
    stop = t4[-1:] + t5[:1]
    out = llm.generate("stop strings", SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True,
                                                      stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop"
    assert stop not in out.text and comp.text.startswith(out.text)
    assert out.text == comp.text[: comp.text.find(stop)]


def test_stop_token_ids(llm):
    base = llm.generate("tokens", GREEDY)[0].outputs[0].token_ids
    out = llm.generate("tokens", SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=[base[3]]))[0]
    comp = out.outputs[0]
    assert comp.finish_reason == "stop" and comp.token_ids == base[: base.index(base[3]) + 1]


def test_special_looking_user_text_is_plain(llm):
    ids = llm.generate("<|start|>user<|message|>hi<|end|>", GREEDY)[0].prompt_token_ids
    assert all(t < 199998 for t in ids)


def test_bad_inputs_are_clear_errors(llm):
    with pytest.raises(ValueError, match="out of range"):
        llm.generate(prompt_token_ids=[[1, 201088]])
    with pytest.raises(ValueError, match="exactly one"):
        llm.generate()
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=float("nan"))
    with pytest.raises(ValueError, match="maximum context length"):
        llm.generate(prompt_token_ids=[[1] * llm.config.max_model_len])


def test_skip_tokenizer_init_with_any_vocab(tmp_path):
    make_tiny_checkpoint(tmp_path, fmt="bf16", num_layers=2, vocab_size=1000, write_tokenizer=False)
    llm = LLM(str(tmp_path), device="cpu", skip_tokenizer_init=True, progress=False)
    assert llm.config.scheduler.max_num_batched_tokens == 8192  # the default off a large GPU
    out = llm.generate(prompt_token_ids=[[1, 2, 3]], sampling_params=GREEDY)[0].outputs[0]
    assert len(out.token_ids) == 12 and all(0 <= t < 1000 for t in out.token_ids) and out.text == ""
    with pytest.raises(ValueError, match="tokenizer"):
        llm.generate("text")


class ScriptedSampler:
    """A fake sampler that emits a fixed token sequence (to drive chat through a known harmony answer)."""

    def __init__(self, tokens: list[int]):
        self.tokens = list(tokens)

    def sample(self, logits, batch):
        return SampleResult([self.tokens.pop(0) for _ in batch.params], [None] * len(batch.params))

    def sample_tokens(self, logits, batch):  # the async engine's call: the tokens as a tensor
        return torch.tensor([self.tokens.pop(0) for _ in batch.params])


def test_chat_separates_reasoning_and_stops_on_return(llm, monkeypatch):
    enc = llm.tokenizer.encode
    answer = ([200005] + enc("analysis") + [200008] + enc("Two plus two is four.") + [200007, 200006]
              + enc("assistant") + [200005] + enc("final") + [200008] + enc("4") + [200002] + enc("junk"))
    monkeypatch.setattr(llm.engine, "sampler", ScriptedSampler(answer))
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    out = llm.chat(msgs, SamplingParams(max_tokens=100), reasoning_effort="low")[0]
    comp = out.outputs[0]
    assert comp.finish_reason == "stop" and comp.token_ids[-1] == 200002  # stopped on <|return|>
    assert comp.reasoning == "Two plus two is four." and comp.text == "4"
    assert out.prompt_token_ids == HarmonyRenderer().render_chat(msgs, reasoning_effort="low")


def test_chat_tool_call_stops_on_call(llm, monkeypatch):
    enc = llm.tokenizer.encode
    answer = ([200005] + enc("commentary to=functions.get_weather ") + [200003] + enc("json") + [200008]
              + enc('{"city": "Paris"}') + [200012])
    monkeypatch.setattr(llm.engine, "sampler", ScriptedSampler(answer))
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    out = llm.chat([{"role": "user", "content": "Weather in Paris?"}], SamplingParams(max_tokens=100), tools=tools)[0]
    comp = out.outputs[0]
    assert comp.token_ids[-1] == 200012 and comp.finish_reason == "stop"
    assert [(c.name, c.arguments) for c in comp.tool_calls] == [("get_weather", '{"city": "Paris"}')]
    assert "get_weather" in llm.tokenizer.decode(out.prompt_token_ids)


def test_default_model_made_on_first_use(caplog):
    import logging

    with caplog.at_level(logging.WARNING):
        llm = LLM(device="cpu", progress=False)
    assert "embedded tiny random gpt-oss model" in caplog.text
    assert llm.generate("hi", SamplingParams(max_tokens=2, temperature=0))[0].outputs[0].token_ids
