"""The /v1/responses request (the subset of OpenAI's Responses API that gpt-oss serves), validated, and its
input items turned into OpenAI chat messages for the harmony renderer.

Every field is bounded here, before rendering or tokenization; a violation is a pydantic error on that
field (a 400 whose `param` names it). Types are strict, NaN refused, unknown fields ignored.

Input items -> chat messages (one message per item, in order; harmony merges nothing, so order is kept):
  {"role": user|system|developer|assistant, "content": str | [text parts]}  -> that message
  {"type": "function_call", "call_id", "name", "arguments"}                 -> assistant tool_calls [that call]
  {"type": "function_call_output", "call_id", "output"}                     -> tool message for call_id
  {"type": "reasoning", "content" | "summary": [text parts]}                 -> assistant reasoning_content
Output items of an earlier response have exactly these shapes, so they can be sent back as input.
Images, files, item references and built-in tools are refused with a 400.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_INPUT_ITEMS = 2048
MAX_INPUT_CHARS = 1_000_000  # all input texts (and instructions) together
MAX_TOOLS = 128
MAX_ID_CHARS = 256
MAX_OUTPUT_TOKENS_LIMIT = 1 << 31  # a sanity bound; the engine checks prompt + max against max_model_len
_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")
_ROLES = ("user", "system", "developer", "assistant")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class FunctionTool(_Model):
    type: Literal["function"]
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = Field(None, max_length=MAX_INPUT_CHARS)
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_chat_tool(self) -> dict:
        fn = {"name": self.name, "description": self.description or ""}
        if self.parameters is not None:
            fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


class ReasoningParam(_Model):
    effort: Literal["low", "medium", "high"] | None = None
    summary: str | None = None  # accepted, ignored (gpt-oss gives its raw reasoning, not a summary)


class TextFormat(_Model):
    type: Literal["text"] = "text"


class TextParam(_Model):
    format: TextFormat | None = None


def _text_of(content: Any, where: str) -> str:
    """A string, or the texts of a list of text parts joined by newlines (as harmony joins parts)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        # pydantic turns a ValueError (not a TypeError) into a 400 on the field
        raise ValueError(f"{where} must be a string or a list of text parts")  # noqa: TRY004
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise ValueError(f"{where}[{j}]: only text parts are supported (got type {kind!r})")
        texts.append(part["text"])
    return "\n".join(texts)


def _str_field(item: dict, key: str, where: str, *, limit: int | None = None) -> str:
    v = item.get(key)
    if not isinstance(v, str) or (limit is not None and not 0 < len(v) <= limit):
        raise ValueError(f"{where}.{key} must be a string" + (f" of 1 to {limit} characters" if limit else ""))
    return v


def item_to_message(item: Any, where: str) -> dict | None:
    """One input item -> one OpenAI chat message, or None for an empty reasoning item (ValueError naming
    the item when malformed)."""
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object")  # noqa: TRY004 (pydantic wants a ValueError)
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}")
        return {"role": role, "content": _text_of(item.get("content"), f"{where}.content")}
    if kind == "function_call":
        call_id = _str_field(item, "call_id", where, limit=MAX_ID_CHARS)
        name = _str_field(item, "name", where, limit=64)
        args = _str_field(item, "arguments", where)
        return {"role": "assistant", "content": None,
                "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}]}
    if kind == "function_call_output":
        call_id = _str_field(item, "call_id", where, limit=MAX_ID_CHARS)
        return {"role": "tool", "tool_call_id": call_id, "content": _text_of(item.get("output"), f"{where}.output")}
    if kind == "reasoning":
        parts = item.get("content") or item.get("summary") or []
        text = _text_of(parts, f"{where}.content")
        return {"role": "assistant", "content": None, "reasoning_content": text} if text else None
    raise ValueError(f"{where}.type {kind!r} is not supported (message, function_call, function_call_output, "
                     "reasoning)")


def message_chars(m: dict) -> int:
    n = len(m.get("content") or "") + len(m.get("reasoning_content") or "")
    for call in m.get("tool_calls") or ():
        n += len(call["function"]["name"]) + len(call["function"]["arguments"])
    return n


class ResponsesRequest(_Model):
    model: str = Field(max_length=MAX_ID_CHARS)
    # After validation: the input as OpenAI chat messages (see the module docstring).
    input: Any
    instructions: str | None = Field(None, max_length=MAX_INPUT_CHARS)
    reasoning: ReasoningParam | None = None
    tools: list[FunctionTool] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Any = "auto"  # after validation: "auto" | "none" | "required" | {"type": "function", "name"}
    parallel_tool_calls: bool | None = None  # accepted; gpt-oss makes one call per response
    max_output_tokens: int | None = Field(None, ge=1, le=MAX_OUTPUT_TOKENS_LIMIT)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    user: str | None = Field(None, max_length=MAX_ID_CHARS)
    metadata: dict[str, str] | None = Field(None, max_length=16)  # accepted and returned
    text: TextParam | None = None
    truncation: Literal["auto", "disabled"] | None = None  # accepted; overlong input is a 400 either way
    background: Literal[False] = False
    include: list[str] | None = Field(None, max_length=16)  # accepted, ignored

    @field_validator("input")
    @classmethod
    def _input(cls, v: Any) -> list[dict]:
        if isinstance(v, str):
            if len(v) > MAX_INPUT_CHARS:
                raise ValueError(f"the input exceeds {MAX_INPUT_CHARS} characters")
            return [{"role": "user", "content": v}]
        if not isinstance(v, list) or not v:
            raise ValueError("input must be a string or a non-empty list of input items")
        if len(v) > MAX_INPUT_ITEMS:
            raise ValueError(f"at most {MAX_INPUT_ITEMS} input items")
        messages = [m for i, item in enumerate(v) if (m := item_to_message(item, f"input[{i}]")) is not None]
        if sum(message_chars(m) for m in messages) > MAX_INPUT_CHARS:
            raise ValueError(f"the input exceeds {MAX_INPUT_CHARS} characters")
        return messages

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: Any) -> str | dict:
        if v in ("auto", "none", "required"):
            return v
        if isinstance(v, dict) and v.get("type") == "function" and isinstance(v.get("name"), str):
            return {"type": "function", "name": v["name"]}
        raise ValueError('tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}')

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v and any(len(k) > 64 or len(val) > 512 for k, val in v.items()):
            raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return v

    @property
    def effort(self) -> str:
        return (self.reasoning.effort if self.reasoning else None) or "medium"

    def allowed_tool_names(self) -> tuple[str, ...] | None:
        """The functions "required" / a named tool_choice restricts the answer to; None when free.
        Raises ValueError (param tool_choice) when the choice names no declared tool."""
        names = [t.name for t in self.tools or ()]
        if self.tool_choice in ("auto", "none"):
            return None
        if not names:
            raise ValueError(f"tool_choice {self.tool_choice!r} needs tools")
        if self.tool_choice == "required":
            return tuple(names)
        name = self.tool_choice["name"]
        if name not in names:
            raise ValueError(f"tool_choice names function {name!r}, which is not among the tools")
        return (name,)
