"""Hugging Face tokenizer files equivalent to o200k_harmony, as the gpt-oss checkpoints ship them.

`write_tokenizer_files(dir)` writes tokenizer.json (byte-level BPE: vocab, merges derived from the
ranks, the o200k split regex, byte-level decoder, the special tokens as added tokens),
tokenizer_config.json and special_tokens_map.json. Deriving the merges takes a few seconds, so
the tokenizer.json text is generated once into the tokenizer cache directory and copied after.
The output is deterministic; its sha256 is pinned below so a stale or corrupt cache is
regenerated and an unintended format change is caught.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from oss_engine.chat.tokenizer import (
    NUM_BASE_TOKENS,
    O200K_PATTERN,
    byte_level_alphabet,
    ensure_ranks_file,
    read_ranks,
    resolve_cache_dir,
    special_token_names,
    write_atomically,
)

CACHED_TOKENIZER_JSON = "o200k_harmony.tokenizer.json"
# sha256 of the generated tokenizer.json; update it only when the format changes on purpose.
TOKENIZER_JSON_SHA256 = "4772b050e442a5d10798326af15e67db24cd79d82d5b29e29c95f8e2233106a4"

# As in the published checkpoints (and tiktoken's o200k_base): 200018 is `<|endofprompt|>`.
PUBLISHED_NAME_OVERRIDES = {200018: "<|endofprompt|>"}
BOS, EOS, PAD = "<|startoftext|>", "<|return|>", "<|endoftext|>"


@dataclass(frozen=True)
class TokenizerFilePaths:
    tokenizer_json: Path
    tokenizer_config: Path
    special_tokens_map: Path


def derive_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merge list, in rank order, that reproduces `ranks`.

    For a multi-byte token of rank r, byte-level BPE over its bytes using only ranks < r stops
    at exactly two parts; those two parts are the merge that creates the token. E.g. b"hello"
    might reduce b"h e l l o" -> b"he l l o" -> ... -> b"hel lo", giving the merge (b"hel", b"lo").
    """
    merges: list[tuple[bytes, bytes]] = []
    get = ranks.get
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_i, best_rank = -1, rank
            for i in range(len(parts) - 1):
                pair_rank = get(parts[i] + parts[i + 1])
                if pair_rank is not None and pair_rank < best_rank:
                    best_i, best_rank = i, pair_rank
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) != 2:
            raise ValueError(f"token {token!r} (rank {rank}) is not reachable by BPE merges")
        merges.append((parts[0], parts[1]))
    return merges


def _published_specials() -> dict[int, str]:
    """id -> name of the special tokens as the published HF files name them."""
    return {i: PUBLISHED_NAME_OVERRIDES.get(i, name) for name, i in special_token_names().items()}


def build_tokenizer_json(ranks: Mapping[bytes, int]) -> str:
    """tokenizer.json text (HF tokenizers format) for o200k_harmony."""
    alphabet = byte_level_alphabet()

    def to_unicode(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in by_rank] != list(range(NUM_BASE_TOKENS)):
        raise ValueError("ranks must be exactly 0..199997")
    vocab = {to_unicode(token): rank for token, rank in by_rank}
    merges = [[to_unicode(a), to_unicode(b)] for a, b in derive_merges(ranks)]
    added_tokens = [
        {
            "id": i,
            "content": name,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, name in sorted(_published_specials().items())
    ]
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added_tokens,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            # tiktoken takes a whole pre-token that is itself a token without merging; so does
            # HF BPE with ignore_merges.
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }
    return json.dumps(doc, ensure_ascii=False, indent=None, separators=(",", ":"))


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_tokenizer_json(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the generated tokenizer.json in the cache directory, generating it if the cached
    copy is missing or does not have the pinned sha256."""
    cache = resolve_cache_dir(cache_dir)
    path = cache / CACHED_TOKENIZER_JSON
    if path.exists() and _sha256_file(path) == TOKENIZER_JSON_SHA256:
        return path
    data = build_tokenizer_json(read_ranks(ensure_ranks_file(cache))).encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_JSON_SHA256:
        raise RuntimeError(
            f"generated tokenizer.json has sha256 {digest}, expected {TOKENIZER_JSON_SHA256}; "
            "if the format was changed on purpose, update TOKENIZER_JSON_SHA256"
        )
    write_atomically(path, data)
    return path


def _tokenizer_config() -> dict:
    added = {
        str(i): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, name in sorted(_published_specials().items())
    }
    return {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "extra_special_tokens": {},
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _special_tokens_map() -> dict:
    def entry(content: str) -> dict:
        return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}

    return {"bos_token": entry(BOS), "eos_token": entry(EOS), "pad_token": entry(PAD)}


def write_tokenizer_files(
    out_dir: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> TokenizerFilePaths:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`
    (created if needed; existing files are overwritten)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = TokenizerFilePaths(
        tokenizer_json=out / "tokenizer.json",
        tokenizer_config=out / "tokenizer_config.json",
        special_tokens_map=out / "special_tokens_map.json",
    )
    shutil.copyfile(cached_tokenizer_json(cache_dir), paths.tokenizer_json)
    paths.tokenizer_config.write_text(json.dumps(_tokenizer_config(), indent=2) + "\n", encoding="utf-8")
    paths.special_tokens_map.write_text(json.dumps(_special_tokens_map(), indent=2) + "\n", encoding="utf-8")
    return paths
