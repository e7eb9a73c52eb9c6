"""o200k_harmony, the gpt-oss tokenizer, built offline from the vendored o200k_base ranks.

Contract:
- ids 0..199997 are the o200k_base BPE ranks; 199998..201087 are special tokens (named as
  openai-harmony names them: the nine harmony tokens, every other id `<|reserved_N|>`).
- `encode` never produces a special id: text that looks like a special token is plain text.
- `decode` accepts special ids (they decode to their names) and refuses ids outside the vocabulary.
- The ranks file is only ever read from a sha256-verified uncompressed copy in a cache directory.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import json
import operator
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import tiktoken

O200K_BASE_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
RANKS_FILE_NAME = "o200k_base.tiktoken"
VENDORED_RANKS_GZ = Path(__file__).resolve().parent.parent / "data" / "o200k_base.tiktoken.gz"

NUM_BASE_TOKENS = 199_998  # ids 0..199997 are BPE ranks
VOCAB_SIZE = 201_088  # ids 0..201087 (the model's embedding rows)

# The o200k_base pre-tokenizer split: letter runs with optional contractions (two case
# shapes), 1-3 digit groups, punctuation runs, newline runs, and whitespace.
O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)


class TokenizerFileError(RuntimeError):
    """The ranks file (cached or vendored) is missing or fails its sha256 check."""


class TokenizerMismatchError(ValueError):
    """A checkpoint's tokenizer.json disagrees with the built-in o200k_harmony encoding."""


@dataclass(frozen=True)
class HarmonyTokens:
    """The named special ids of o200k_harmony."""

    startoftext: int = 199998
    endoftext: int = 199999
    return_: int = 200002
    constrain: int = 200003
    channel: int = 200005
    start: int = 200006
    end: int = 200007
    message: int = 200008
    call: int = 200012


HARMONY_TOKENS = HarmonyTokens()

# generation_config.json of the published checkpoints: <|return|>, <|endoftext|>, <|call|>.
EOS_TOKEN_IDS = (HARMONY_TOKENS.return_, HARMONY_TOKENS.endoftext, HARMONY_TOKENS.call)


def special_token_names() -> dict[str, int]:
    """name -> id for all 1090 special ids (199998..201087), in id order."""
    named = {
        HARMONY_TOKENS.startoftext: "<|startoftext|>",
        HARMONY_TOKENS.endoftext: "<|endoftext|>",
        HARMONY_TOKENS.return_: "<|return|>",
        HARMONY_TOKENS.constrain: "<|constrain|>",
        HARMONY_TOKENS.channel: "<|channel|>",
        HARMONY_TOKENS.start: "<|start|>",
        HARMONY_TOKENS.end: "<|end|>",
        HARMONY_TOKENS.message: "<|message|>",
        HARMONY_TOKENS.call: "<|call|>",
    }
    return {named.get(i, f"<|reserved_{i}|>"): i for i in range(NUM_BASE_TOKENS, VOCAB_SIZE)}


# ---------------------------------------------------------------------------------------------
# The ranks file: vendored gzip -> verified uncompressed copy in a cache directory.
# ---------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same directory and a rename, so readers
    never see a partial file (concurrent writers of the same content are harmless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        from ..config import cache_dir as engine_cache_dir  # $OSS_ENGINE_CACHE_DIR or ~/.cache/oss_engine

        return engine_cache_dir() / "tokenizer"
    return Path(cache_dir).expanduser()


def ensure_ranks_file(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of a sha256-verified `o200k_base.tiktoken` in `cache_dir` (created from the vendored
    gzip on first use). A cached file that fails the check is refused, not silently replaced."""
    path = resolve_cache_dir(cache_dir) / RANKS_FILE_NAME
    if path.exists():
        digest = _sha256(path.read_bytes())
        if digest != O200K_BASE_SHA256:
            raise TokenizerFileError(
                f"{path} has sha256 {digest}, expected {O200K_BASE_SHA256}; the file is corrupt "
                f"or not o200k_base. Delete it and it will be re-created from {VENDORED_RANKS_GZ}."
            )
        return path
    if not VENDORED_RANKS_GZ.exists():
        raise TokenizerFileError(f"vendored ranks {VENDORED_RANKS_GZ} are missing")
    data = gzip.decompress(VENDORED_RANKS_GZ.read_bytes())
    digest = _sha256(data)
    if digest != O200K_BASE_SHA256:
        raise TokenizerFileError(
            f"vendored ranks {VENDORED_RANKS_GZ} decompress to sha256 {digest}, "
            f"expected {O200K_BASE_SHA256}"
        )
    write_atomically(path, data)
    return path


def read_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken ranks file: one `base64(token_bytes) rank` per line."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


# ---------------------------------------------------------------------------------------------
# The tokenizer.
# ---------------------------------------------------------------------------------------------


class Tokenizer:
    """o200k_harmony on tiktoken. Built from ranks that the caller has verified."""

    def __init__(self, ranks: Mapping[bytes, int]):
        if len(ranks) != NUM_BASE_TOKENS:
            raise ValueError(f"expected {NUM_BASE_TOKENS} ranks, got {len(ranks)}")
        self.tokens = HARMONY_TOKENS
        self.eos_token_ids: list[int] = list(EOS_TOKEN_IDS)
        self.special_names: dict[str, int] = special_token_names()
        self.special_ids: frozenset[int] = frozenset(self.special_names.values())
        self._ranks = dict(ranks)
        self._id_to_special = {i: name for name, i in self.special_names.items()}
        self._enc = tiktoken.Encoding(
            "o200k_harmony",
            pat_str=O200K_PATTERN,
            mergeable_ranks=self._ranks,
            special_tokens=self.special_names,
            explicit_n_vocab=VOCAB_SIZE,
        )

    @property
    def vocab_size(self) -> int:
        return VOCAB_SIZE

    @property
    def ranks(self) -> Mapping[bytes, int]:
        """token bytes -> id for the 199998 BPE tokens (do not mutate)."""
        return self._ranks

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids; special-token-looking text stays plain text (ids < 199998)."""
        return self._enc.encode_ordinary(text)

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        """Plain Python ints in [0, vocab_size) (numpy/torch integer scalars are accepted)."""
        out = []
        for i in ids:
            try:
                i = operator.index(i)
            except TypeError:
                raise ValueError(f"token id {i!r} is not an integer") from None
            if not 0 <= i < VOCAB_SIZE:
                raise ValueError(f"token id {i!r} is outside the vocabulary [0, {VOCAB_SIZE})")
            out.append(i)
        return out

    def checked_id(self, token_id: int) -> int:
        """`token_id` as a plain int; ValueError if it is not an id of the vocabulary."""
        return self._check_ids([token_id])[0]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of the ids; a special id gives its name's UTF-8 bytes."""
        return self._enc.decode_bytes(self._check_ids(ids))

    def decode(self, ids: Iterable[int]) -> str:
        """UTF-8 text of the ids; invalid byte sequences become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def id_to_token_bytes(self, token_id: int) -> bytes:
        return self._enc.decode_single_token_bytes(self.checked_id(token_id))

    def is_special(self, token_id: int) -> bool:
        return token_id in self.special_ids

    def token_id(self, special_name: str) -> int:
        """Id of a special token by name, e.g. "<|start|>"."""
        try:
            return self.special_names[special_name]
        except KeyError:
            raise ValueError(f"{special_name!r} is not a special token of o200k_harmony") from None

    def incremental_decoder(self, *, skip_special: bool = False) -> "IncrementalDecoder":
        return IncrementalDecoder(self, skip_special=skip_special)


class IncrementalDecoder:
    """Streaming detokenizer: feed ids one at a time, get text deltas.

    Invariant: "".join(feed(i) for i in ids) + flush() == tokenizer.decode(ids) (with
    skip_special=False). A multi-byte UTF-8 character split over tokens is held back until its
    last byte arrives; bytes that can never form a character become U+FFFD.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special: bool = False):
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        if self._skip_special and self._tokenizer.is_special(token_id):
            return ""
        return self._utf8.decode(self._tokenizer.id_to_token_bytes(token_id))

    def flush(self) -> str:
        """Text of any held-back incomplete sequence (as U+FFFD); resets the decoder."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text


# ---------------------------------------------------------------------------------------------
# Checking a checkpoint's tokenizer.json (HF tokenizers, byte-level BPE) against our encoding.
# ---------------------------------------------------------------------------------------------

# Published checkpoints name id 200018 `<|endofprompt|>` (from o200k_base); openai-harmony
# names it `<|reserved_200018|>`. Both are accepted.
SPECIAL_NAME_ALIASES = {"<|endofprompt|>": 200018}


def byte_level_alphabet() -> list[str]:
    """GPT-2 byte-level map: byte b -> one printable unicode char. Printable latin-1 bytes map
    to themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD) map to U+0100.. in order.
    E.g. b" " (0x20, the 33rd unprintable byte) -> "Ġ" (U+0120)."""
    printable = set(range(ord("!"), ord("~") + 1))
    printable |= set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    alphabet, extra = [], 0
    for b in range(256):
        if b in printable:
            alphabet.append(chr(b))
        else:
            alphabet.append(chr(256 + extra))
            extra += 1
    return alphabet


def byte_level_decode_table() -> dict[int, str]:
    """str.translate table: byte-level char -> latin-1 char of its byte. Characters below 256
    that are not byte-level chars map to U+10FFFF so a later .encode("latin-1") fails."""
    table = {c: "\U0010ffff" for c in range(256)}
    for b, ch in enumerate(byte_level_alphabet()):
        table[ord(ch)] = chr(b)
    return table


def check_tokenizer_json(path: str | os.PathLike, tokenizer: Tokenizer) -> None:
    """Raise TokenizerMismatchError unless every vocab entry (bytes -> id) and every added token
    (content -> id) of the HF tokenizer.json at `path` agrees with `tokenizer`, and the vocab
    covers all 199998 BPE tokens."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        vocab: dict[str, int] = data["model"]["vocab"]
        added = data.get("added_tokens") or []
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TokenizerMismatchError(f"{path}: not a readable HF tokenizer.json ({e})") from e

    specials = {**tokenizer.special_names, **SPECIAL_NAME_ALIASES}

    def fail(what: str) -> None:
        raise TokenizerMismatchError(f"{path}: {what} (built-in encoding: o200k_harmony)")

    table = byte_level_decode_table()
    ranks = tokenizer.ranks
    base_seen = 0
    for text, token_id in vocab.items():
        if text in specials:
            if specials[text] != token_id:
                fail(f"vocab token {text!r} has id {token_id}, expected {specials[text]}")
            continue
        try:
            token_bytes = text.translate(table).encode("latin-1")
        except UnicodeEncodeError:
            fail(f"vocab token {text!r} (id {token_id}) is not a byte-level token")
        expected = ranks.get(token_bytes)
        if expected != token_id:
            fail(f"vocab token {text!r} = bytes {token_bytes!r} has id {token_id}, expected {expected}")
        base_seen += 1
    if base_seen != NUM_BASE_TOKENS:
        fail(f"vocab has {base_seen} of the {NUM_BASE_TOKENS} BPE tokens")
    for entry in added:
        content, token_id = entry.get("content"), entry.get("id")
        if specials.get(content) != token_id:
            fail(f"added token {content!r} has id {token_id}, expected {specials.get(content)}")


def load_tokenizer(
    model_dir: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None
) -> Tokenizer:
    """Build o200k_harmony from the verified ranks; if `model_dir` has a tokenizer.json, check
    that it agrees (TokenizerMismatchError otherwise)."""
    tokenizer = Tokenizer(read_ranks(ensure_ranks_file(cache_dir)))
    if model_dir is not None:
        hf_file = Path(model_dir) / "tokenizer.json"
        if hf_file.exists():
            check_tokenizer_json(hf_file, tokenizer)
    return tokenizer
