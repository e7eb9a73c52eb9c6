"""Completion ids -> Responses API output items, and the stream events that build them.

One output item per harmony message, in order: an analysis message is a `reasoning` item, a final (or
unaddressed commentary, or unparseable) message a `message` item, a call to `functions.NAME` a
`function_call` item. Messages to other recipients (built-in tools gpt-oss was not given) are dropped.

Events per item (each a dict with "type"; the caller adds "sequence_number"):
  reasoning:     output_item.added, content_part.added (reasoning_text), reasoning_text.delta*,
                 reasoning_text.done, content_part.done, output_item.done
  message:       output_item.added, content_part.added (output_text), output_text.delta*,
                 output_text.done, content_part.done, output_item.done
  function_call: output_item.added, function_call_arguments.delta*, function_call_arguments.done,
                 output_item.done
Invariant: the deltas of an item concatenate to its text in output_item.done, and the items are exactly
those of the whole (non-streamed) response; streamed or not, the same code builds them.

reasoning_tokens counts whole analysis messages (header and end token included), as chat does.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..chat.harmony_parse import StreamDelta, StreamingParser, is_analysis_message, message_kind
from ..chat.tokenizer import HARMONY_TOKENS

T = HARMONY_TOKENS
_MESSAGE_END_IDS = frozenset((T.end, T.return_, T.call))
_ITEM_KINDS = {"reasoning": "reasoning", "content": "message", "tool_call": "function_call"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


@dataclass
class _Open:
    """The item being streamed."""

    kind: str  # "reasoning" | "message" | "function_call"
    output_index: int
    id: str
    message_index: int
    text: str = ""
    name: str | None = None
    call_id: str | None = None


class OutputBuilder:
    """Feed the completion's ids as they arrive; get the events they complete. `finish` closes the
    answer; `items` then holds the output items of the response."""

    def __init__(self, parser: StreamingParser, tokenizer):
        self._parser, self._tok = parser, tokenizer
        self.items: list[dict] = []  # finished items, in output order
        self._open: _Open | None = None
        self._streamed: set[int] = set()  # harmony message indices that got an item
        self._segment: list[int] = []
        self.num_tokens = self.reasoning_tokens = 0

    def feed(self, token_ids: list[int]) -> list[dict]:
        events: list[dict] = []
        for token in token_ids:
            self.num_tokens += 1
            self._segment.append(token)
            if token in _MESSAGE_END_IDS:
                self._close_segment()
            self._on_delta(self._parser.feed(token), events)
        return events

    def finish(self, incomplete: bool) -> list[dict]:
        """Flush the parser and close the open item (status "incomplete" if the answer was cut)."""
        events: list[dict] = []
        self._on_delta(self._parser.finish(), events)
        self._close_segment()
        self._close(events, "incomplete" if incomplete else "completed")
        for index, m in enumerate(self._parser.completion().messages):
            if index not in self._streamed and message_kind(m.channel, m.recipient) == "tool_call":
                # A call with no argument text had no delta: it still is a call.
                self._start(StreamDelta("tool_call", m.content, m.channel, m.recipient, index), events)
                self._close(events, "completed")
        return events

    # -- internals ---------------------------------------------------------------------------------

    def _close_segment(self) -> None:
        if self._segment and is_analysis_message(self._segment, self._tok):
            self.reasoning_tokens += len(self._segment)
        self._segment = []

    def _on_delta(self, d: StreamDelta | None, events: list[dict]) -> None:
        if d is None or not d.text or d.kind not in _ITEM_KINDS:
            return
        if self._open is None or self._open.message_index != d.message_index:
            self._close(events, "completed")
            self._start(d, events, with_text=False)
        self._append(d.text, events)

    def _start(self, d: StreamDelta, events: list[dict], with_text: bool = True) -> None:
        kind = _ITEM_KINDS[d.kind]
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}[kind]
        item = _Open(kind, len(self.items), new_id(prefix), d.message_index)
        if kind == "function_call":
            item.name, item.call_id = d.tool_name, new_id("call")
        self._open = item
        self._streamed.add(d.message_index)
        events.append({"type": "response.output_item.added", "output_index": item.output_index,
                       "item": self._item(item, "in_progress", text="")})
        if kind != "function_call":
            events.append({"type": "response.content_part.added", **self._where(item), "content_index": 0,
                           "part": self._part(item, "")})
        if with_text:
            item.text = d.text

    def _append(self, text: str, events: list[dict]) -> None:
        item = self._open
        item.text += text
        if item.kind == "reasoning":
            events.append({"type": "response.reasoning_text.delta", **self._where(item), "content_index": 0,
                           "delta": text})
        elif item.kind == "message":
            events.append({"type": "response.output_text.delta", **self._where(item), "content_index": 0,
                           "delta": text, "logprobs": []})
        else:
            events.append({"type": "response.function_call_arguments.delta", **self._where(item), "delta": text})

    def _close(self, events: list[dict], status: str) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        if item.kind == "reasoning":
            events.append({"type": "response.reasoning_text.done", **self._where(item), "content_index": 0,
                           "text": item.text})
        elif item.kind == "message":
            events.append({"type": "response.output_text.done", **self._where(item), "content_index": 0,
                           "text": item.text, "logprobs": []})
        else:
            events.append({"type": "response.function_call_arguments.done", **self._where(item),
                           "name": item.name, "arguments": item.text})
        if item.kind != "function_call":
            events.append({"type": "response.content_part.done", **self._where(item), "content_index": 0,
                           "part": self._part(item, item.text)})
        done = self._item(item, status, text=item.text)
        self.items.append(done)
        events.append({"type": "response.output_item.done", "output_index": item.output_index, "item": done})

    @staticmethod
    def _where(item: _Open) -> dict:
        return {"item_id": item.id, "output_index": item.output_index}

    @staticmethod
    def _part(item: _Open, text: str) -> dict:
        if item.kind == "reasoning":
            return {"type": "reasoning_text", "text": text}
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def _item(self, item: _Open, status: str, text: str) -> dict:
        if item.kind == "reasoning":
            content = [self._part(item, text)] if status != "in_progress" else []
            return {"type": "reasoning", "id": item.id, "summary": [], "content": content, "status": status}
        if item.kind == "message":
            content = [self._part(item, text)] if status != "in_progress" else []
            return {"type": "message", "id": item.id, "role": "assistant", "status": status, "content": content}
        return {"type": "function_call", "id": item.id, "call_id": item.call_id, "name": item.name,
                "arguments": text, "status": status}
