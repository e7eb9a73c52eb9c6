"""Per-request streaming detokenization with stop strings.

Contract:
- `push(token_id)` feeds one generated token; the returned step's `delta_text` is the text now safe to
  emit, `text` the full text so far, `stopped` whether a stop string was completed.
- A stop string is found across token boundaries; the text is cut before it (the stop string is not part
  of the text) and nothing after the cut is ever emitted.
- While stop strings are set, the last (longest stop length - 1) characters are held back from
  `delta_text`: a stop string completed later starts at most that many characters before the end of the
  current text, so everything before them is final. `finish()` returns the held-back rest when the request
  ends for another reason (length, eos).
- "".join(deltas) + finish() == the final `text`.
- Incomplete UTF-8 is held back by the tokenizer's IncrementalDecoder (and flushed as U+FFFD by finish).
- The caller decides which tokens are text: a stop token (eos, stop_token_ids) should not be pushed.
- Without a tokenizer (token-id-only engines) the text is always "".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DetokenizeStep:
    delta_text: str  # new text safe to emit
    stopped: bool  # a stop string was completed (the text is cut before it)
    text: str  # the full text so far


class Detokenizer:
    def __init__(self, tokenizer, stop: list[str] | None, skip_special: bool = False):
        self._decoder = tokenizer.incremental_decoder(skip_special=skip_special) if tokenizer is not None else None
        self._stop = [s for s in (stop or []) if s]
        self._hold = max((len(s) for s in self._stop), default=1) - 1  # characters held back from deltas
        self._text = ""
        self._emitted = 0  # len of the prefix of _text already returned as deltas
        self._stopped = False
        self._finished = False

    @property
    def text(self) -> str:
        return self._text

    @property
    def stopped(self) -> bool:
        return self._stopped

    def push(self, token_id: int) -> DetokenizeStep:
        if self._decoder is None or self._stopped or self._finished:
            return DetokenizeStep("", self._stopped, self._text)
        self._append(self._decoder.feed(token_id))
        return DetokenizeStep(self._take_delta(), self._stopped, self._text)

    def finish(self) -> str:
        """The text not yet emitted (held back), once the request ended; later pushes add nothing."""
        if self._decoder is None or self._finished:
            return ""
        self._finished = True
        if not self._stopped:
            self._append(self._decoder.flush())  # an incomplete character at the end becomes U+FFFD
        delta = self._text[self._emitted:]
        self._emitted = len(self._text)
        return delta

    def _append(self, new: str) -> None:
        # A stop string completed by `new` ends inside it, so it starts at most len(stop) - 1 characters
        # before it: e.g. text "ab", new "cd", stop "bc" -> searched from index 1 of "abcd", found at 1.
        if not new:
            return
        start = max(0, len(self._text) - self._hold)
        self._text += new
        hits = [i for i in (self._text.find(s, start) for s in self._stop) if i >= 0]
        if hits:
            self._text = self._text[:min(hits)]
            self._stopped = True

    def _take_delta(self) -> str:
        end = len(self._text) if self._stopped else len(self._text) - self._hold
        if end <= self._emitted:
            return ""
        delta = self._text[self._emitted:end]
        self._emitted = end
        return delta
