"""Stored /v1/responses, for GET /v1/responses/{id} and for continuing a conversation with
previous_response_id. In memory, bounded by a count and by a total size, oldest dropped first.

Each entry keeps the whole conversation it ended (OpenAI chat messages, without the request's
instructions, which OpenAI does not carry over), so an entry never depends on an older one that may
have been evicted. Thread-safe (one lock); every operation is O(1) besides copying the entry.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_CHARS = 256 << 20  # all stored conversations and responses together, as JSON characters


@dataclass(frozen=True)
class StoredResponse:
    response: dict  # the response object as returned
    messages: list[dict]  # the conversation up to and including this response's output


class ResponseStore:
    def __init__(self, max_entries: int, max_chars: int = DEFAULT_MAX_CHARS):
        if max_entries < 0 or max_chars < 0:
            raise ValueError("ResponseStore bounds must be >= 0")
        self.max_entries, self.max_chars = max_entries, max_chars
        self._entries: OrderedDict[str, tuple[StoredResponse, int]] = OrderedDict()  # oldest first
        self._chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response_id: str, entry: StoredResponse) -> None:
        """Keep `entry` (a deep copy), evicting the oldest entries beyond the bounds. An entry larger
        than max_chars alone is not kept."""
        size = len(json.dumps(entry.response)) + len(json.dumps(entry.messages))
        entry = copy.deepcopy(entry)
        with self._lock:
            old = self._entries.pop(response_id, None)
            if old is not None:
                self._chars -= old[1]
            if size > self.max_chars or self.max_entries == 0:
                return
            self._entries[response_id] = (entry, size)
            self._chars += size
            while len(self._entries) > self.max_entries or self._chars > self.max_chars:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._chars -= evicted

    def get(self, response_id: str) -> StoredResponse | None:
        """A deep copy (callers may change it), or None if unknown or evicted."""
        with self._lock:
            found = self._entries.get(response_id)
        return copy.deepcopy(found[0]) if found is not None else None
