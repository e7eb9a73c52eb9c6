"""Harmony, the gpt-oss chat format, on openai-harmony: OpenAI chat messages -> prompt ids, and
completion ids -> reasoning / content / tool calls (whole or streamed).

Rendering contract (GPT_OSS_SPEC section 6):
- harmony system message: model identity, knowledge cutoff, date, reasoning effort, channels;
- harmony developer message: the OpenAI "system"/"developer" texts as instructions (joined by a
  blank line, in order) and the function tools as `namespace functions`;
- assistant tool calls render as the model emits them,
  `<|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>ARGS<|call|>`;
  tool results as `<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>...<|end|>`;
- an analysis message is dropped when a final answer follows it (its turn is finished) and kept
  otherwise (a tool loop in progress);
- the prompt ends with `<|start|>assistant`; all message text is plain text (never special ids).
Parsing contract: never raises. Output that harmony cannot parse keeps what was parsed and turns
the rest into plain content (special tokens as their names, stop tokens dropped), with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from openai_harmony import (
    Author,
    DeveloperContent,
    HarmonyEncoding,
    HarmonyEncodingName,
    HarmonyError,
    Message,
    ReasoningEffort,
    RenderOptions,
    Role,
    SystemContent,
    ToolDescription,
    load_harmony_encoding,
)

from oss_engine.chat.harmony_parse import (  # noqa: F401  (re-exported: the parse API lives beside the renderer)
    ParsedCompletion,
    ParsedMessage,
    ParsedToolCall,
    StreamDelta,
    StreamingParser,
    function_name,
    message_kind,
)
from oss_engine.chat.tokenizer import HARMONY_TOKENS, Tokenizer, ensure_ranks_file, read_ranks

logger = logging.getLogger(__name__)

T = HARMONY_TOKENS
STOP_TOKEN_IDS = (T.return_, T.call)  # never <|end|>: an answer is several messages
_EFFORTS = {"low": ReasoningEffort.LOW, "medium": ReasoningEffort.MEDIUM, "high": ReasoningEffort.HIGH}
_TEXT_PART_TYPES = ("text", "input_text", "output_text")


def load_harmony_encoding_offline(ranks_dir: Path) -> HarmonyEncoding:
    """openai-harmony reads `$TIKTOKEN_ENCODINGS_BASE/o200k_base.tiktoken` (and checks its sha256)
    instead of downloading it; the variable is set only for the duration of the load."""
    key = "TIKTOKEN_ENCODINGS_BASE"
    previous = os.environ.get(key)
    os.environ[key] = str(ranks_dir)
    try:
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


def _text(content, where: str, *, allow_none: bool = False) -> str:
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in _TEXT_PART_TYPES:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{where}.content[{j}]: only text parts are supported, got {kind!r}")
            if not isinstance(part.get("text"), str):
                raise ValueError(f"{where}.content[{j}].text must be a string")
            texts.append(part["text"])
        return "\n".join(texts)
    raise ValueError(f"{where}.content must be a string or a list of text parts")


def _function_tools(tools: list[dict] | None) -> list[ToolDescription]:
    out = []
    for i, tool in enumerate(tools or []):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"tools[{i}].function.name must be a non-empty string")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"tools[{i}].function.parameters must be an object")
        out.append(ToolDescription.new(fn["name"], fn.get("description") or "", params))
    return out


def _tool_call_messages(calls, where: str, names_by_id: dict[str, str]) -> list[Message]:
    if not isinstance(calls, list):
        raise ValueError(f"{where}.tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"{where}.tool_calls[{j}].function.name must be a non-empty string")
        args = fn.get("arguments")
        args = "{}" if args is None else args if isinstance(args, str) else json.dumps(args)
        name = function_name(fn["name"]) or fn["name"]
        if isinstance(call.get("id"), str):
            names_by_id[call["id"]] = name
        # The recipient sits in the channel part, as the model writes it; `_render` ends the
        # message with <|call|>.
        out.append(
            Message.from_role_and_content(Role.ASSISTANT, args)
            .with_channel(f"commentary to=functions.{name}")
            .with_content_type("<|constrain|>json")
        )
    return out


def _assistant_messages(msg: dict, where: str, names_by_id: dict[str, str]) -> list[Message]:
    reasoning = msg.get("reasoning_content", msg.get("reasoning"))
    calls = msg.get("tool_calls") or []
    content = msg.get("content")
    if content is None and not calls and not reasoning:
        raise ValueError(f"{where}: an assistant message needs content, tool_calls or reasoning_content")
    out = []
    if reasoning:
        out.append(Message.from_role_and_content(Role.ASSISTANT, _text(reasoning, where)).with_channel("analysis"))
    text = _text(content, where, allow_none=True)
    if calls:
        if text:  # a preamble before the calls
            out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("commentary"))
        out += _tool_call_messages(calls, where, names_by_id)
    elif content is not None:
        out.append(Message.from_role_and_content(Role.ASSISTANT, text).with_channel("final"))
    return out


def _tool_result_message(msg: dict, where: str, names_by_id: dict[str, str]) -> Message:
    name = msg.get("name") or names_by_id.get(msg.get("tool_call_id"))
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"{where}: tool message with tool_call_id {msg.get('tool_call_id')!r} matches no earlier "
            "assistant tool call and has no 'name'"
        )
    name = function_name(name) or name
    author = Author.new(Role.TOOL, f"functions.{name}")
    text = _text(msg.get("content"), where, allow_none=True)
    return Message.from_author_and_content(author, text).with_channel("commentary").with_recipient("assistant")


@dataclass(frozen=True)
class _Converted:
    instructions: list[str]  # OpenAI system/developer texts
    messages: list[Message]  # the conversation after the harmony system/developer messages


def _convert(messages: list[dict]) -> _Converted:
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list")
    instructions: list[str] = []
    out: list[Message] = []
    names_by_id: dict[str, str] = {}
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, dict) else None
        if role in ("system", "developer"):
            text = _text(msg.get("content"), where)
            if text:
                instructions.append(text)
        elif role == "user":
            out.append(Message.from_role_and_content(Role.USER, _text(msg.get("content"), where)))
        elif role == "assistant":
            out += _assistant_messages(msg, where, names_by_id)
        elif role == "tool":
            out.append(_tool_result_message(msg, where, names_by_id))
        else:
            raise ValueError(f"{where}.role must be system, developer, user, assistant or tool; got {role!r}")
    return _Converted(instructions, out)


def drop_finished_analysis(messages: list[Message]) -> list[Message]:
    """Drop each assistant analysis message that a final answer follows (its turn finished);
    keep the analysis after the last final answer (a tool loop in progress)."""
    finals = [i for i, m in enumerate(messages) if m.author.role == Role.ASSISTANT and m.channel == "final"]
    last_final = finals[-1] if finals else -1
    return [
        m
        for i, m in enumerate(messages)
        if not (i < last_final and m.author.role == Role.ASSISTANT and m.channel == "analysis")
    ]


# ---------------------------------------------------------------------------------------------
# The renderer.
# ---------------------------------------------------------------------------------------------


class HarmonyRenderer:
    """Holds the loaded harmony encoding (offline) and our tokenizer; build once, share."""

    def __init__(self, tokenizer: Tokenizer | None = None, *, cache_dir: str | os.PathLike | None = None):
        ranks_path = ensure_ranks_file(cache_dir)
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer(read_ranks(ranks_path))
        self.encoding = load_harmony_encoding_offline(ranks_path.parent)

    @property
    def stop_token_ids(self) -> list[int]:
        return list(STOP_TOKEN_IDS)

    def render_chat(
        self,
        messages: list[dict],
        *,
        reasoning_effort: str = "medium",
        tools: list[dict] | None = None,
        model_identity: str | None = None,
        conversation_start_date: str | None = None,
    ) -> list[int]:
        """Prompt ids for OpenAI chat `messages`, ending with `<|start|>assistant`. Raises
        ValueError for a malformed request."""
        effort = _EFFORTS.get(str(reasoning_effort).lower())
        if effort is None:
            raise ValueError(f"reasoning_effort must be low, medium or high; got {reasoning_effort!r}")
        functions = _function_tools(tools)
        converted = _convert(messages)
        system = SystemContent.new().with_reasoning_effort(effort)
        if model_identity is not None:
            system = system.with_model_identity(model_identity)
        if conversation_start_date is not None:
            system = system.with_conversation_start_date(conversation_start_date)
        harmony = [Message.from_role_and_content(Role.SYSTEM, system)]
        if converted.instructions or functions:
            developer = DeveloperContent.new()
            if converted.instructions:
                developer = developer.with_instructions("\n\n".join(converted.instructions))
            if functions:
                developer = developer.with_function_tools(functions)
            harmony.append(Message.from_role_and_content(Role.DEVELOPER, developer))
        harmony += drop_finished_analysis(converted.messages)
        options = RenderOptions(conversation_has_function_tools=bool(functions))
        ids: list[int] = []
        for m in harmony:
            ids += self._render(m, options)
        return ids + [T.start] + self.tokenizer.encode("assistant")

    def _render(self, message: Message, options: RenderOptions) -> list[int]:
        try:
            ids = self.encoding.render(message, options)
        except HarmonyError as e:
            raise ValueError(f"cannot render {message.author.role.value} message: {e}") from e
        if (message.channel or "").startswith("commentary to="):
            # A tool call: harmony ends it with <|end|>; the model (and the spec) use <|call|>.
            if ids[-1] != T.end:
                raise RuntimeError("openai-harmony changed: a tool call no longer ends in <|end|>")
            ids[-1] = T.call
        return ids

    def streaming_parser(self) -> StreamingParser:
        return StreamingParser(self.encoding, self.tokenizer)

    def parse_completion(self, token_ids: list[int]) -> ParsedCompletion:
        """Completion ids (after the prompt's `<|start|>assistant`, with or without the stop
        token) -> reasoning, content and tool calls. Never raises."""
        parser = self.streaming_parser()
        for token_id in token_ids:
            parser.feed(token_id)
        return parser.completion()
