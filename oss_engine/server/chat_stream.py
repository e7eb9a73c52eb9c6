"""One chat choice, translated as its tokens arrive: harmony parsed incrementally into OpenAI `delta`
dicts (reasoning_content, content, tool_calls), stop strings applied to the final text, reasoning tokens
counted, logprobs mapped to OpenAI's shape. The concatenation of a choice's deltas is its non-streamed
message."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from ..chat.harmony_parse import is_analysis_message
from ..chat.tokenizer import HARMONY_TOKENS
from ..chat.tool_choice import ToolChoiceGrammar
from ..sampling_params import SamplingParams
from .context import ServerContext

T = HARMONY_TOKENS
LOGPROB_FLOOR = -9999.0  # -inf is not JSON
_SEGMENT_END_IDS = frozenset((T.end, T.return_, T.call))


@dataclass(frozen=True)
class Prepared:
    """A chat request after validation and rendering: what the engine runs and how outputs are shaped."""

    prompt_ids: list[int]
    params: SamplingParams
    constraint_factory: ToolChoiceGrammar | None
    stops: tuple[str, ...]
    top_logprobs: int | None  # None: no logprobs

# ---------------------------------------------------------------------------------------------
# One choice: harmony parsed as tokens arrive, stop strings, reasoning tokens, logprobs.
# ---------------------------------------------------------------------------------------------


class Choice:
    """Feed a choice's ids as they arrive; get OpenAI `delta` dicts in order. Their concatenation is the
    non-streamed message (`message()`). The final text is held back while it may begin a stop string."""

    def __init__(self, index: int, ctx: ServerContext, prep: Prepared):
        self.index, self._tok, self._prep = index, ctx.tokenizer, prep
        self._parser = ctx.harmony.streaming_parser()
        self._hold = max((len(s) for s in prep.stops), default=1) - 1
        self.num_tokens = self.reasoning_tokens = 0
        self._segment: list[int] = []  # ids of the message in progress (reasoning count)
        self.content, self._held = "", ""
        self._call_index: dict[int, int] = {}  # harmony message index -> tool call index
        self.call_ids: list[str] = []
        self.logprobs: list[dict] = []
        self._logprobs_sent = 0
        self.stopped = False  # a stop string was found: the rest is ignored
        self.finish_reason: str | None = None
        self.parsed = None  # ParsedCompletion, once finished

    def feed(self, token_ids: list[int], logprobs: list[dict[int, float]] | None) -> list[dict]:
        out: list[dict] = []
        for j, token in enumerate(token_ids):
            if self.stopped or self.finish_reason:
                break
            self.num_tokens += 1
            self._segment.append(token)
            if token in _SEGMENT_END_IDS:
                self._close_segment()
            if self._prep.top_logprobs is not None and logprobs is not None and j < len(logprobs):
                self.logprobs.append(logprob_entry(self._tok, token, logprobs[j], self._prep.top_logprobs))
            self._on_delta(self._parser.feed(token), out)
        return merge_deltas(out)

    def finish(self, engine_reason: str | None) -> list[dict]:
        if self.finish_reason:
            return []
        out: list[dict] = []
        if not self.stopped:
            self._on_delta(self._parser.finish(), out)
            self._flush(out)
        self._close_segment()
        self.parsed = self._parser.completion()
        for call in self.parsed.tool_calls[len(self.call_ids):]:  # calls without argument text had no delta
            out += self._call_deltas(len(self.call_ids), call.name, call.arguments)
        if self.stopped:
            self.finish_reason = "stop"
        elif engine_reason == "length":
            self.finish_reason = "length"
        else:
            self.finish_reason = "tool_calls" if self.parsed.tool_calls else "stop"
        return merge_deltas(out)

    def take_logprobs(self) -> dict | None:
        if self._prep.top_logprobs is None:
            return None
        new, self._logprobs_sent = self.logprobs[self._logprobs_sent:], len(self.logprobs)
        return {"content": new}

    def message(self) -> dict:
        msg = {"role": "assistant", "content": self.content or None,
               "reasoning_content": self.parsed.reasoning or None}
        if self.parsed.tool_calls:
            msg["tool_calls"] = [{"id": cid, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                 for cid, c in zip(self.call_ids, self.parsed.tool_calls)]
        return msg

    # -- internals ---------------------------------------------------------------------------

    def _close_segment(self) -> None:
        if self._segment and is_analysis_message(self._segment, self._tok):
            self.reasoning_tokens += len(self._segment)
        self._segment = []

    def _on_delta(self, d, out: list[dict]) -> None:
        if d is None or not d.text:
            return
        if d.kind == "content":
            return self._content(d.text, out)
        self._flush(out)
        if d.kind == "reasoning":
            out.append({"reasoning_content": d.text})
        elif d.kind == "tool_call":
            index = self._call_index.get(d.message_index)
            if index is None:
                index = self._call_index[d.message_index] = len(self.call_ids)
                out += self._call_deltas(index, d.tool_name, "")
            out.append({"tool_calls": [{"index": index, "function": {"arguments": d.text}}]})
        # kind "other" (a non-function recipient) has no place in a chat completion

    def _call_deltas(self, index: int, name: str, arguments: str) -> list[dict]:
        self.call_ids.append(f"call_{uuid.uuid4().hex[:24]}")
        head = {"tool_calls": [{"index": index, "id": self.call_ids[-1], "type": "function",
                                "function": {"name": name, "arguments": ""}}]}
        return [head] + ([{"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}] if arguments else [])

    def _content(self, text: str, out: list[dict]) -> None:
        buf = self._held + text
        hits = [i for i in (buf.find(s) for s in self._prep.stops) if i >= 0]
        if hits:
            self._held = ""
            self.stopped = True
            return self._emit(buf[: min(hits)], out)
        cut = max(len(buf) - self._hold, 0)
        self._held = buf[cut:]
        self._emit(buf[:cut], out)

    def _flush(self, out: list[dict]) -> None:
        held, self._held = self._held, ""
        self._emit(held, out)

    def _emit(self, text: str, out: list[dict]) -> None:
        if text:
            self.content += text
            out.append({"content": text})


def merge_deltas(deltas: list[dict]) -> list[dict]:
    """Join neighbouring text deltas of the same kind (and argument pieces of the same call)."""
    out: list[dict] = []
    for d in deltas:
        prev = out[-1] if out else None
        if prev and d.keys() == prev.keys() and ("content" in d or "reasoning_content" in d):
            key = next(iter(d))
            prev[key] += d[key]
        elif (prev and "tool_calls" in d and "tool_calls" in prev and "id" not in d["tool_calls"][0]
              and "id" not in prev["tool_calls"][0] and prev["tool_calls"][0]["index"] == d["tool_calls"][0]["index"]):
            prev["tool_calls"][0]["function"]["arguments"] += d["tool_calls"][0]["function"]["arguments"]
        else:
            out.append(d)
    return out


def logprob_entry(tokenizer, token_id: int, logprobs: dict[int, float], k: int) -> dict:
    def item(i: int, lp: float) -> dict:
        b = tokenizer.decode_bytes([i])
        lp = LOGPROB_FLOOR if math.isnan(lp) else max(lp, LOGPROB_FLOOR)  # -inf and NaN are not JSON
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}

    top = sorted(logprobs.items(), key=lambda kv: -kv[1])[:k]
    return {**item(token_id, logprobs.get(token_id, LOGPROB_FLOOR)), "top_logprobs": [item(i, lp) for i, lp in top]}
