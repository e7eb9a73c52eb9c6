"""Detokenizer: streamed deltas, stop strings across tokens, hold-back, multi-byte characters."""

from __future__ import annotations

import random

import pytest

from oss_engine.chat.tokenizer import NUM_BASE_TOKENS, load_tokenizer
from oss_engine.engine.detokenizer import Detokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def run(tok, ids, stop=None, skip_special=False):
    """Push every id (until stopped); return (deltas, final text, stopped, emitted-so-far after each push)."""
    d = Detokenizer(tok, stop, skip_special=skip_special)
    deltas, emitted, stopped = [], [], False
    for i in ids:
        step = d.push(i)
        deltas.append(step.delta_text)
        emitted.append("".join(deltas))
        assert step.text.startswith(emitted[-1])  # never emitted what the text does not hold
        if step.stopped:
            stopped = True
            break
    deltas.append(d.finish())
    assert d.text == step.text or not stopped
    return deltas, d.text, stopped, emitted


def oracle(tok, ids, stop):
    """The text by plain incremental decoding: cut at the first stop string as soon as one appears."""
    dec = tok.incremental_decoder()
    text = ""
    for i in ids:
        text += dec.feed(i)
        hits = [text.find(s) for s in stop if s in text]
        if hits:
            return text[:min(hits)], True
    return text + dec.flush(), False


def random_ids(tok, rng, n):
    """Mostly readable words, some raw BPE ids (often partial UTF-8), a few special ids."""
    words = ["Hello", " world", ",", " the", " cat", "!", "\n", " é", "€", "你好", "🎉", " stop", "ping"]
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.6:
            out += tok.encode(rng.choice(words))
        elif r < 0.95:
            out.append(rng.randrange(NUM_BASE_TOKENS))
        else:
            out.append(rng.choice([200006, 200008, 199999]))
    return out[:n]


def test_deltas_concatenate_to_full_text_without_stops(tok):
    rng = random.Random(0)
    for _ in range(50):
        ids = random_ids(tok, rng, rng.randrange(1, 40))
        deltas, text, stopped, emitted = run(tok, ids)
        assert not stopped and text == tok.decode(ids) and "".join(deltas) == text
        dec = tok.incremental_decoder()  # no stop strings: nothing held back beyond incomplete UTF-8
        assert emitted == list(_prefixes(dec.feed(i) for i in ids))


def _prefixes(chunks):
    acc = ""
    for c in chunks:
        acc += c
        yield acc


def test_random_sequences_with_stops(tok):
    rng = random.Random(1)
    n_stopped = 0
    for _ in range(200):
        ids = random_ids(tok, rng, rng.randrange(1, 40))
        full = tok.decode(ids)
        stop = [rng.choice(["ping", "o w", "\n", "t!", "é€", "zzz"])]
        if len(full) > 3:  # a substring of the text, likely spanning tokens
            a = rng.randrange(len(full) - 2)
            stop.append(full[a:a + rng.randrange(2, 6)])
        deltas, text, stopped, emitted = run(tok, ids, stop)
        assert (text, stopped) == oracle(tok, ids, stop)
        assert "".join(deltas) == text
        assert not any(s in e for s in stop for e in emitted)  # not even transiently
        n_stopped += stopped
    assert n_stopped > 100  # the stops were really exercised


def test_stop_split_over_two_tokens(tok):
    ids = tok.encode("Hello world")  # "Hello" | " world"
    assert len(ids) == 2
    d = Detokenizer(tok, ["lo wo"])
    first = d.push(ids[0])
    assert (first.delta_text, first.stopped, first.text) == ("H", False, "Hello")  # 4 chars held back
    second = d.push(ids[1])
    assert (second.delta_text, second.stopped, second.text) == ("el", True, "Hel")
    assert d.finish() == ""


def test_stop_split_over_three_tokens(tok):
    ids = tok.encode("Hello, World! It's")  # "Hello" | "," | " World" | ...
    deltas, text, stopped, _ = run(tok, ids, ["o, W"])
    assert stopped and text == "Hell" and "".join(deltas) == "Hell"


def test_multibyte_character_split_over_tokens(tok):
    ids = tok.encode("a🎉b")
    assert any(tok.decode([i]).endswith("\ufffd") for i in ids)  # the emoji's bytes are split
    d = Detokenizer(tok, None)
    steps = [d.push(i) for i in ids]
    assert "".join(s.delta_text for s in steps) == "a🎉b" and "\ufffd" not in "".join(s.text for s in steps)
    euro = [tok.ranks[bytes([b])] for b in "€".encode()]  # one token per byte
    deltas, text, stopped, _ = run(tok, tok.encode("x") + euro + tok.encode("y"), ["€"])
    assert stopped and text == "x" and deltas == ["x", "", "", "", ""]  # stop of 1 char: no hold-back
    d = Detokenizer(tok, None)
    d.push(euro[0])
    assert d.finish() == "\ufffd"  # an incomplete character at the end is flushed as U+FFFD


def test_earliest_stop_wins(tok):
    ids = tok.encode("Hello world")  # both stops complete with " world"; "wo" starts first
    assert run(tok, ids, ["orld", "wo"])[1:3] == ("Hello ", True)


def test_stop_at_very_start(tok):
    _, text, stopped, emitted = run(tok, tok.encode("Hello world"), ["Hel"])
    assert stopped and text == "" and emitted == [""]


def test_hold_back_and_finish(tok):
    d = Detokenizer(tok, ["xyz", "q"])
    assert d.push(tok.encode("Hello")[0]).delta_text == "Hel"  # longest stop 3: hold 2
    assert d.push(tok.encode(" there")[0]).delta_text == "lo the"
    assert d.finish() == "re" and d.text == "Hello there"
    assert d.push(tok.encode("!")[0]).delta_text == "" and d.text == "Hello there"  # ended


def test_push_after_stop_adds_nothing(tok):
    d = Detokenizer(tok, ["world"])
    ids = tok.encode("Hello world and more")
    steps = [d.push(i) for i in ids]
    assert steps[1].stopped and steps[-1].stopped and steps[-1].text == "Hello " and steps[-1].delta_text == ""


def test_special_tokens(tok):
    start = tok.token_id("<|start|>")
    ids = tok.encode("a") + [start] + tok.encode("b")
    assert run(tok, ids)[1] == "a<|start|>b"
    assert run(tok, ids, skip_special=True)[1] == "ab"
    assert run(tok, ids, stop=["a<|st"])[1:3] == ("", True)


def test_without_tokenizer():
    d = Detokenizer(None, ["x"])
    step = d.push(5)
    assert (step.delta_text, step.stopped, step.text) == ("", False, "") and d.finish() == ""
