"""Message content: a tagged union on `type`, validated on the way in, kept as JSON bytes.

Known types are checked field by field against their Structs; the object the client
sent is then stored as given (so fields we do not model survive), and unknown types
round-trip untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec

from engine.errors import InvalidInput


class Metadata(msgspec.Struct, tag="metadata"):
    title: str
    description: str | None = None
    is_public: bool = False
    fork_from_conversation_id: str | None = None
    fork_from_message_id: str | None = None


class Text(msgspec.Struct, tag="text"):
    text: str


class Image(msgspec.Struct, tag="image"):
    image_url: str
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None
    size_bytes: int | None = None


class ImageBatchItem(msgspec.Struct):
    image_url: str
    prompt: str | None = None
    model: str | None = None


class ImageBatch(msgspec.Struct, tag="image_batch"):
    images: list[ImageBatchItem]


class ToolCall(msgspec.Struct, tag="tool_call"):
    tool_name: str
    arguments: Any
    tool_call_id: str


class ToolResult(msgspec.Struct, tag="tool_result"):
    tool_call_id: str
    result: Any
    success: bool


KNOWN: dict[str, type[msgspec.Struct]] = {
    "metadata": Metadata,
    "text": Text,
    "image": Image,
    "image_batch": ImageBatch,
    "tool_call": ToolCall,
    "tool_result": ToolResult,
}

_encode = msgspec.json.Encoder().encode


def normalize(content: dict[str, Any]) -> bytes:
    """Validate a content object and return its canonical JSON; raises InvalidInput."""
    kind = content.get("type")
    if not isinstance(kind, str):
        raise InvalidInput("content.type is required and must be a string")
    spec = KNOWN.get(kind)
    if spec is not None:
        try:
            msgspec.convert(content, spec, strict=True)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"content ({kind}): {exc}") from None
    return _encode(content)


PREVIEW_CHARS = 200  # of a text message, in a conversation's `last_message`


class _Kind(msgspec.Struct):
    type: str
    text: Any = None  # other fields are skipped unread


_kind = msgspec.json.Decoder(_Kind).decode


def preview(content: bytes) -> str | None:
    """What a sidebar shows of a message: the first characters of a text, a placeholder
    such as `[image]` for another type; None for the root's metadata."""
    try:
        kind = _kind(content)
    except msgspec.DecodeError:  # stored content is canonical JSON: only damage gets here
        return None
    if kind.type == "text" and isinstance(kind.text, str):
        return kind.text[:PREVIEW_CHARS]
    return None if kind.type == "metadata" else f"[{kind.type}]"
