"""Parsing harmony completions: completion ids -> reasoning / content / tool calls, whole or streamed.

Contract: never raises. Output that harmony cannot parse keeps what was parsed and turns the rest into
plain content (special tokens as their names, stop tokens dropped), with a logged warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from openai_harmony import HarmonyEncoding, Role, StreamableParser

from oss_engine.chat.tokenizer import HARMONY_TOKENS, Tokenizer

logger = logging.getLogger(__name__)

T = HARMONY_TOKENS
_MESSAGE_END_IDS = frozenset((T.end, T.return_, T.call))
_FALLBACK_SKIP_IDS = frozenset((T.return_, T.call, T.endoftext))
# A message header longer than this (the longest real one, a tool call to a 64-character name, is ~30
# tokens) is malformed output: it and what follows become plain content, so a stream never goes silent.
MAX_HEADER_TOKENS = 64


# ---------------------------------------------------------------------------------------------
# Parse results.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedMessage:
    channel: str | None
    recipient: str | None
    content: str
    content_type: str | None = None


@dataclass(frozen=True)
class ParsedToolCall:
    name: str  # without the "functions." prefix
    arguments: str  # the raw text the model wrote (normally JSON)


@dataclass(frozen=True)
class ParsedCompletion:
    reasoning: str  # analysis messages, concatenated
    content: str  # final (and unaddressed commentary / unparseable) text, concatenated
    tool_calls: list[ParsedToolCall]
    messages: list[ParsedMessage]
    malformed: bool  # harmony could not parse all of it; some text became content unparsed


@dataclass(frozen=True)
class StreamDelta:
    """Text one fed token added. `kind` says where it goes: "reasoning", "content", "tool_call"
    (arguments text of the call to `tool_name`) or "other" (addressed to a non-function tool).
    `message_index` numbers the messages of the completion; a new index starts a new tool call."""

    kind: str
    text: str
    channel: str | None
    recipient: str | None
    message_index: int

    @property
    def tool_name(self) -> str | None:
        return function_name(self.recipient)


def function_name(recipient: str | None) -> str | None:
    if recipient and recipient.strip().startswith("functions."):
        return recipient.strip()[len("functions.") :]
    return None


def message_kind(channel: str | None, recipient: str | None) -> str:
    """Where a message's text goes in an OpenAI response (see StreamDelta.kind)."""
    if function_name(recipient) is not None:
        return "tool_call"
    if recipient:
        return "other"
    return "reasoning" if channel == "analysis" else "content"


def _completion_from_messages(messages: list[ParsedMessage], malformed: bool) -> ParsedCompletion:
    kinds = [message_kind(m.channel, m.recipient) for m in messages]
    return ParsedCompletion(
        reasoning="".join(m.content for m, k in zip(messages, kinds) if k == "reasoning"),
        content="".join(m.content for m, k in zip(messages, kinds) if k == "content"),
        tool_calls=[
            ParsedToolCall(name=function_name(m.recipient), arguments=m.content)
            for m, k in zip(messages, kinds)
            if k == "tool_call"
        ],
        messages=messages,
        malformed=malformed,
    )


# ---------------------------------------------------------------------------------------------
# Streaming parser.
# ---------------------------------------------------------------------------------------------


class StreamingParser:
    """Feed completion ids one at a time (the ids after the prompt's `<|start|>assistant`); each
    feed returns the StreamDelta it produced or None. finish() flushes; completion() gives the
    same ParsedCompletion as HarmonyRenderer.parse_completion. No method raises.

    Invariant: concatenating the deltas of one kind (and one message_index for tool calls)
    gives the matching field of completion().
    """

    def __init__(self, encoding: HarmonyEncoding, tokenizer: Tokenizer):
        self._tokenizer = tokenizer
        self._parser = StreamableParser(encoding, Role.ASSISTANT, strict=False)
        self._pending: list[int] = []  # ids fed to harmony whose text no delta has shown yet
        self._done: list[ParsedMessage] = []  # completed messages
        self._emitted = ""  # text emitted for the message in progress
        self._channel: str | None = None  # ... and its channel / recipient
        self._recipient: str | None = None
        self._fallback = None  # IncrementalDecoder once harmony has failed
        self._fallback_text: list[str] = []
        self._finished = False

    def feed(self, token_id: int) -> StreamDelta | None:
        if self._finished:
            return None
        try:
            token_id = self._tokenizer.checked_id(token_id)
        except ValueError:
            logger.warning("harmony parser: ignoring invalid token id %r", token_id)
            return None
        if self._fallback is not None:
            return self._fallback_delta(self._fallback_decode([token_id]))
        try:
            self._parser.process(token_id)
            if token_id in _MESSAGE_END_IDS:
                return self._on_message_end(token_id)
            delta = self._parser.last_content_delta
            if not delta:
                self._pending.append(token_id)
                if len(self._pending) > MAX_HEADER_TOKENS and not self._emitted:
                    return self._enter_fallback(self._pending, ValueError(
                        f"no message header completed within {MAX_HEADER_TOKENS} tokens"))
                return None
            if not self._emitted:
                self._channel = self._parser.current_channel
                self._recipient = self._parser.current_recipient
        except Exception as e:  # HarmonyError and anything else from the bindings
            return self._enter_fallback(self._pending + [token_id], e)
        self._pending.clear()
        self._emitted += delta
        return self._delta(delta, self._channel, self._recipient)

    def finish(self) -> StreamDelta | None:
        """End of the completion: complete a message cut off by max_tokens, or turn a truncated
        header into content. Returns the last delta, if any."""
        if self._finished:
            return None
        if self._fallback is None:
            try:
                self._parser.process_eos()
                delta = self._on_message_end(None)
                if self._emitted:  # harmony kept a cut-off message open: keep what was shown
                    self._done.append(ParsedMessage(self._channel, self._recipient, self._emitted))
                    self._emitted = ""
            except Exception as e:
                delta = self._enter_fallback(self._pending, e)
        else:
            delta = None
        self._finished = True
        if self._fallback is not None:
            tail = self._fallback.flush()
            self._fallback_text.append(tail)
            if tail:
                delta = self._delta((delta.text if delta else "") + tail, None, None)
        return delta

    def completion(self) -> ParsedCompletion:
        self.finish()
        messages = list(self._done)
        text = "".join(self._fallback_text)
        if text:
            messages.append(ParsedMessage(channel=None, recipient=None, content=text))
        return _completion_from_messages(messages, malformed=bool(text))

    # -- internals ---------------------------------------------------------------------------

    def _delta(self, text: str, channel: str | None, recipient: str | None) -> StreamDelta:
        return StreamDelta(message_kind(channel, recipient), text, channel, recipient, len(self._done))

    def _on_message_end(self, token_id: int | None) -> StreamDelta | None:
        """After an end token (or EOS): record the message harmony completed, if it did, and
        emit any of its text not yet shown (e.g. content of a message with no header)."""
        messages = self._parser.messages
        if len(messages) <= len(self._done):
            if token_id is not None:
                self._pending.append(token_id)
            return None
        m = messages[len(self._done)]
        text = "".join(getattr(c, "text", "") for c in m.content)
        rest = text[len(self._emitted) :] if text.startswith(self._emitted) else ""
        channel, recipient = m.channel, m.recipient
        delta = self._delta(rest, channel, recipient) if rest else None
        self._done.append(ParsedMessage(channel, recipient, self._emitted + rest, m.content_type))
        self._emitted, self._channel, self._recipient = "", None, None
        self._pending.clear()
        return delta

    def _enter_fallback(self, unshown: list[int], error: Exception) -> StreamDelta | None:
        """Harmony gave up: keep the message in progress as far as it got, and show the ids whose
        text was never shown (e.g. a broken header) and all later ids as plain content."""
        if self._emitted:
            self._done.append(ParsedMessage(self._channel, self._recipient, self._emitted))
            self._emitted = ""
        self._fallback = self._tokenizer.incremental_decoder()
        self._pending = []
        if any(i not in _FALLBACK_SKIP_IDS for i in unshown):
            logger.warning("malformed harmony output (%s); the rest is plain content", error)
        return self._fallback_delta(self._fallback_decode(unshown))

    def _fallback_decode(self, ids: list[int]) -> str:
        text = "".join(self._fallback.feed(i) for i in ids if i not in _FALLBACK_SKIP_IDS)
        self._fallback_text.append(text)
        return text

    def _fallback_delta(self, text: str) -> StreamDelta | None:
        return self._delta(text, None, None) if text else None


# ---------------------------------------------------------------------------------------------
# OpenAI chat messages -> harmony messages.
# ---------------------------------------------------------------------------------------------


def is_analysis_message(segment: list[int], tokenizer) -> bool:
    """Whether one message's ids (`[<|start|>assistant]<|channel|>analysis<|message|>...`) are reasoning."""
    if T.channel not in segment:
        return False
    i = segment.index(T.channel) + 1
    j = next((k for k in range(i, len(segment)) if segment[k] in (T.message, T.constrain)), None)
    return j is not None and tokenizer.decode(segment[i:j]).strip() == "analysis"
