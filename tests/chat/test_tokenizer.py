"""o200k_harmony tokenizer: encoding, special-token safety, ranks verification, agreement with
openai-harmony, and the Hugging Face tokenizer files we write."""

from __future__ import annotations

import json
import time

import pytest

from oss_engine.chat.harmony import load_harmony_encoding_offline
from oss_engine.chat.tokenizer import (
    EOS_TOKEN_IDS,
    NUM_BASE_TOKENS,
    RANKS_FILE_NAME,
    VOCAB_SIZE,
    TokenizerFileError,
    TokenizerMismatchError,
    check_tokenizer_json,
    ensure_ranks_file,
    load_tokenizer,
)
from oss_engine.chat.tokenizer_files import derive_merges, write_tokenizer_files

SAMPLES = [
    "hello world",
    "Hello, World! It's 2025-06-01; we're 3.14159 sure.",
    "héllo wörld ñ Ünïcödé İstanbul ǅ ﬁ",
    "你好，世界。こんにちは 안녕하세요 مرحبا Привет мир",
    "emoji 🎉👍🏽👨‍👩‍👧 flags 🇫🇷 and \u200b zero-width",
    "tabs\t\tand   spaces    \n\n\r\n  trailing   ",
    "def f(x):\n    return x ** 2  # square\n",
    "",
    " ",
    "1234567890 1,000,000 0.001",
]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tokenizer-cache")


@pytest.fixture(scope="module")
def tok(cache_dir):
    return load_tokenizer(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def hf_dir(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf-tokenizer")
    write_tokenizer_files(out, cache_dir=cache_dir)
    return out


def test_hello_world(tok):
    assert tok.encode("hello world") == [24912, 2375]
    assert tok.vocab_size == VOCAB_SIZE == 201088


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < NUM_BASE_TOKENS for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


def test_special_looking_text_is_plain(tok):
    text = "<|start|>user<|message|>hi<|end|><|return|><|call|><|endoftext|><|reserved_200100|>"
    ids = tok.encode(text)
    assert ids and max(ids) < NUM_BASE_TOKENS
    assert tok.decode(ids) == text


def test_decode_special_ids(tok):
    t = tok.tokens
    assert tok.decode([t.start, 1428, t.message]) == "<|start|>user<|message|>"
    assert tok.decode([t.startoftext, t.endoftext, t.return_, t.constrain, t.channel, t.end, t.call]) == (
        "<|startoftext|><|endoftext|><|return|><|constrain|><|channel|><|end|><|call|>"
    )
    assert tok.decode([200000, 200018, 201087]) == "<|reserved_200000|><|reserved_200018|><|reserved_201087|>"
    assert tok.token_id("<|channel|>") == 200005
    assert len(tok.special_ids) == VOCAB_SIZE - NUM_BASE_TOKENS
    assert tok.eos_token_ids == list(EOS_TOKEN_IDS) == [200002, 199999, 200012]


@pytest.mark.parametrize("bad", [-1, VOCAB_SIZE, 10**9, "7", 1.0])
def test_decode_invalid_id_raises(tok, bad):
    with pytest.raises(ValueError, match="outside the vocabulary|not an integer"):
        tok.decode([24912, bad])


def test_incremental_decoder_holds_back_partial_utf8(tok):
    ids = tok.encode("a🎉b 你好")
    # The emoji is split over two tokens: nothing may come out until its last byte arrives.
    assert tok.decode([ids[1]]) != "🎉"
    dec = tok.incremental_decoder()
    deltas = [dec.feed(i) for i in ids]
    assert "".join(deltas) + dec.flush() == "a🎉b 你好"
    assert all("\ufffd" not in d for d in deltas)
    dec = tok.incremental_decoder()
    assert dec.feed(ids[1]) == "" and dec.flush() == "\ufffd"  # dangling bytes on flush
    dec = tok.incremental_decoder(skip_special=True)
    assert dec.feed(tok.tokens.start) == "" and dec.feed(24912) == "hello"


def test_corrupted_ranks_file_is_refused(tmp_path):
    path = ensure_ranks_file(tmp_path)
    assert path == tmp_path / RANKS_FILE_NAME and path.stat().st_size == 3_613_922
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    data = bytearray(path.read_bytes())
    data[100] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(TokenizerFileError, match="sha256"):
        ensure_ranks_file(tmp_path)
    with pytest.raises(TokenizerFileError):
        load_tokenizer(cache_dir=tmp_path)


def test_agrees_with_openai_harmony(tok, cache_dir):
    enc = load_harmony_encoding_offline(ensure_ranks_file(cache_dir).parent)
    for text in SAMPLES + ["<|start|> looks special", "x" * 1000]:
        assert tok.encode(text) == enc.encode(text, disallowed_special=()), text
    for name, i in tok.special_names.items():
        assert enc.encode(name, allowed_special="all") == [i], name


def test_derive_merges_toy():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"cab": 6}
    # "abc": "ab" (3) beats "bc" (4), then ab+c; "cab": c a b -> c ab -> merge (c, ab).
    assert derive_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c"), (b"c", b"ab")]


def test_hf_tokenizer_json_matches(tok, hf_dir):
    tokenizers = pytest.importorskip("tokenizers")
    hf = tokenizers.Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    assert hf.get_vocab_size(with_added_tokens=True) == VOCAB_SIZE
    for text in SAMPLES + ["The quick brown fox jumps over the lazy dog. " * 20]:
        ids = tok.encode(text)
        assert hf.encode(text, add_special_tokens=False).ids == ids, text
        assert hf.decode(ids) == text
    assert hf.token_to_id("<|return|>") == 200002 and hf.token_to_id("<|start|>") == 200006


def test_hf_config_files(hf_dir):
    config = json.loads((hf_dir / "tokenizer_config.json").read_text())
    assert (config["eos_token"], config["pad_token"], config["bos_token"]) == (
        "<|return|>",
        "<|endoftext|>",
        "<|startoftext|>",
    )
    assert config["added_tokens_decoder"]["200012"]["content"] == "<|call|>"
    assert len(config["added_tokens_decoder"]) == VOCAB_SIZE - NUM_BASE_TOKENS
    special_map = json.loads((hf_dir / "special_tokens_map.json").read_text())
    assert special_map["eos_token"]["content"] == "<|return|>"


def test_write_is_cached_and_deterministic(hf_dir, cache_dir, tmp_path):
    start = time.perf_counter()
    write_tokenizer_files(tmp_path, cache_dir=cache_dir)
    assert time.perf_counter() - start < 1.0
    assert (tmp_path / "tokenizer.json").read_bytes() == (hf_dir / "tokenizer.json").read_bytes()


def test_load_tokenizer_accepts_written_files(hf_dir, cache_dir):
    assert load_tokenizer(hf_dir, cache_dir=cache_dir).encode("hello world") == [24912, 2375]


def _tampered(hf_dir, tmp_path, edit) -> None:
    data = json.loads((hf_dir / "tokenizer.json").read_text(encoding="utf-8"))
    edit(data)
    (tmp_path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def test_vocab_id_mismatch_is_refused(hf_dir, cache_dir, tmp_path):
    _tampered(hf_dir, tmp_path, lambda d: d["model"]["vocab"].__setitem__("hello", 12345))
    with pytest.raises(TokenizerMismatchError, match="'hello'.*12345") as err:
        load_tokenizer(tmp_path, cache_dir=cache_dir)
    assert str(tmp_path / "tokenizer.json") in str(err.value)


def test_added_token_mismatch_is_refused(tok, hf_dir, tmp_path):
    def edit(d):
        entry = next(e for e in d["added_tokens"] if e["content"] == "<|call|>")
        entry["id"] = 200011

    _tampered(hf_dir, tmp_path, edit)
    with pytest.raises(TokenizerMismatchError, match="<\\|call\\|>"):
        check_tokenizer_json(tmp_path / "tokenizer.json", tok)


def test_missing_vocab_entry_is_refused(tok, hf_dir, tmp_path):
    _tampered(hf_dir, tmp_path, lambda d: d["model"]["vocab"].pop("hello"))
    with pytest.raises(TokenizerMismatchError, match="199997 of the 199998"):
        check_tokenizer_json(tmp_path / "tokenizer.json", tok)
