"""Enforcing tool_choice "required" / a named function: a constraint on the harmony recipient.

A completion starts right after the prompt's `<|start|>assistant`, i.e. inside a message header. The
grammar it must follow, message by message:

    header  := <|channel|>analysis<|message|>                                         -> analysis body
             | <|channel|>commentary to=functions.NAME <|constrain|>json<|message|>    -> tool body
    body    := any tokens but the banned ones, ended by <|end|> (next message) or <|call|> (tool body only)
    after <|end|>: <|start|>assistant, then a header again

NAME is any declared tool ("required") or the named one. So the model may reason first, every other
message is a call, and the answer ends with `<|call|>`: `<|return|>` and `<|endoftext|>` are banned
everywhere, and `<|call|>` is banned inside an analysis body (ending there would finish without a call).

Budget: with `max_tokens` known, reasoning may not eat the room a call needs. A token is allowed only if,
after it, the shortest way to the start of a tool body still fits with `call_reserve` tokens to spare
(for the arguments and `<|call|>`); so an analysis message is closed (only `<|end|>` allowed) in time, and
a model that would reason forever (a random one, say) still calls a function within max_tokens. When
nothing fits, the tokens on the shortest way are allowed (a call header as early as possible).

Headers are matched on token-level tries over their canonical token sequences (special ids plus
`tokenizer.encode` of the text pieces, exactly as harmony renders a tool call). Worked example for the
tool `get_weather`: [<|channel|>] + encode("commentary to=functions.get_weather ") + [<|constrain|>] +
encode("json") + [<|message|>] = [200005, 12606, 815, 316, 28, 44580, 775, 170154, 220, 200003, 4108, 200008].

Contract of `allowed_ids(output_token_ids)` (called by the engine before each sampling step with the
sample's tokens so far, which only grow): the ids the next token may take, or None for no constraint.
A sample that left the grammar anyway (it cannot, when the sampler honours the mask) is left unconstrained.

Cost: inside a body the allowed list is the whole vocabulary minus 2-3 ids (a cached list, ~201k ints);
the sampler turns it into a mask each step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

from oss_engine.chat.tokenizer import HARMONY_TOKENS, Tokenizer

logger = logging.getLogger(__name__)

T = HARMONY_TOKENS
ANALYSIS, TOOL = "analysis", "tool"  # body kinds
DEFAULT_CALL_RESERVE = 8  # tokens kept for a call's arguments and <|call|> when reasoning is cut short


@dataclass(eq=False)
class _Node:
    """A trie node. `body` is set on the node reached by a header's final <|message|>. `cost` is the
    fewest tokens from here to being inside a tool body (0 for a tool body's node)."""

    children: dict[int, _Node] = field(default_factory=dict)
    body: str | None = None
    cost: float = math.inf

    @cached_property
    def allowed(self) -> list[int]:
        return list(self.children)

    @cached_property
    def max_child_cost(self) -> float:
        return max(c.cost for c in self.children.values())


class ToolChoiceGrammar:
    """Built once per request from the allowed tool names; calling it makes one constraint per sample
    (it is the engine's `constraint_factory`). Samples share the tries and the body id lists."""

    def __init__(self, tokenizer: Tokenizer, tool_names: Sequence[str], *, max_tokens: int | None = None,
                 call_reserve: int = DEFAULT_CALL_RESERVE):
        if not tool_names:
            raise ValueError("ToolChoiceGrammar needs at least one tool name")
        self.vocab_size, self.max_tokens, self.call_reserve = tokenizer.vocab_size, max_tokens, call_reserve
        self.header_root = _Node()
        analysis_end = self._add(self.header_root, [T.channel] + tokenizer.encode("analysis") + [T.message],
                                 ANALYSIS)
        for name in dict.fromkeys(tool_names):
            seq = ([T.channel] + tokenizer.encode(f"commentary to=functions.{name} ") + [T.constrain]
                   + tokenizer.encode("json") + [T.message])
            self._add(self.header_root, seq, TOOL)
        # After <|end|>: <|start|>assistant leads back into the header trie.
        self.next_root = node = _Node()
        prefix = [T.start] + tokenizer.encode("assistant")
        for token in prefix[:-1]:
            node = node.children.setdefault(token, _Node())
        node.children[prefix[-1]] = self.header_root
        # Costs: tool paths first; an analysis body then costs <|end|> + <|start|>assistant + the shortest
        # tool header; a second pass gives the analysis path's nodes their costs.
        self._set_costs(self.header_root)
        analysis_end.cost = 1 + len(prefix) + self.header_root.cost
        self._set_costs(self.next_root)
        self.analysis_body_cost = analysis_end.cost

    @staticmethod
    def _add(root: _Node, seq: list[int], body: str) -> _Node:
        node = root
        for token in seq:
            node = node.children.setdefault(token, _Node())
        node.body = body
        node.cost = 0 if body == TOOL else math.inf
        return node

    def _set_costs(self, node: _Node) -> float:
        if node.body is None:
            node.cost = 1 + min(self._set_costs(c) for c in node.children.values())
        return node.cost

    def banned(self, body: str) -> frozenset[int]:
        return self._banned[body]

    @cached_property
    def _banned(self) -> dict[str, frozenset[int]]:
        stops = frozenset((T.return_, T.endoftext))
        return {ANALYSIS: stops | {T.call}, TOOL: stops}

    @cached_property
    def _body_ids(self) -> dict[str, list[int]]:
        """Per body kind: every id of the vocabulary but the banned ones (built on first use)."""
        out = {}
        for body, bad in self._banned.items():
            ids, start = [], 0
            for b in sorted(bad):
                ids += range(start, b)
                start = b + 1
            out[body] = ids + list(range(start, self.vocab_size))
        return out

    def header_ids(self, node: _Node, remaining: float) -> list[int]:
        """Children of a header node that leave room for a call within `remaining` tokens."""
        if 1 + node.max_child_cost + self.call_reserve <= remaining:
            return node.allowed
        fits = [t for t, c in node.children.items() if 1 + c.cost + self.call_reserve <= remaining]
        if fits:
            return fits
        best = min(c.cost for c in node.children.values())
        return [t for t, c in node.children.items() if c.cost == best]

    def body_ids(self, body: str, remaining: float) -> list[int]:
        if body == ANALYSIS and 1 + self.analysis_body_cost + self.call_reserve > remaining:
            return [T.end]  # close the reasoning now, or the call no longer fits
        return self._body_ids[body]

    def __call__(self) -> ToolChoiceConstraint:
        return ToolChoiceConstraint(self)


class ToolChoiceConstraint:
    """One sample's position in the grammar, advanced incrementally over its output tokens."""

    def __init__(self, grammar: ToolChoiceGrammar):
        self.grammar = grammar
        self._reset()

    def _reset(self) -> None:
        self._seen = 0  # output tokens consumed
        self._node: _Node | None = self.grammar.header_root  # inside a header (or <|start|>assistant)
        self._body: str | None = None  # inside a message body of this kind
        self._free = False  # finished or off the grammar: unconstrained

    def allowed_ids(self, output_token_ids: list[int]) -> list[int] | None:
        if len(output_token_ids) < self._seen:  # not an extension of what we saw: replay from the start
            self._reset()
        for token in output_token_ids[self._seen:]:
            self._advance(token)
        self._seen = len(output_token_ids)
        if self._free:
            return None
        g = self.grammar
        remaining = math.inf if g.max_tokens is None else g.max_tokens - self._seen  # this token included
        if self._node is not None:
            return g.header_ids(self._node, remaining)
        return g.body_ids(self._body, remaining)

    def _advance(self, token: int) -> None:
        if self._free:
            return
        if self._node is not None:
            child = self._node.children.get(token)
            if child is None:
                return self._leave(token)
            self._node, self._body = (None, child.body) if child.body else (child, None)
        elif token in self.grammar.banned(self._body):
            self._leave(token)
        elif token == T.end:
            self._node, self._body = self.grammar.next_root, None
        elif token == T.call:
            self._free = True  # the answer is complete (the engine stops here)

    def _leave(self, token: int) -> None:
        logger.warning("tool_choice constraint: token %d is outside the grammar; unconstrained from here", token)
        self._free = True
