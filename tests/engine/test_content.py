"""content.normalize: validate known content types, keep everything else as sent."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from engine.content import normalize
from engine.errors import InvalidInput

VALID: dict[str, dict[str, Any]] = {
    "text": {"type": "text", "text": "hello"},
    "image_minimal": {"type": "image", "image_url": "https://x/1.png"},
    "image_full": {
        "type": "image",
        "image_url": "https://x/1.png",
        "thumbnail_url": "https://x/1.thumb.png",
        "width": 640,
        "height": 480,
        "mime_type": "image/png",
        "size_bytes": 1234,
    },
    "image_nulls": {"type": "image", "image_url": "u", "width": None, "mime_type": None},
    "image_batch": {
        "type": "image_batch",
        "images": [{"image_url": "a"}, {"image_url": "b", "prompt": "cat", "model": "m1"}],
    },
    "image_batch_empty": {"type": "image_batch", "images": []},
    "tool_call": {
        "type": "tool_call",
        "tool_name": "search",
        "tool_call_id": "call-1",
        "arguments": {"q": "x", "filters": [{"k": 1, "v": [True, None, 2.5]}], "deep": {"a": {}}},
    },
    "tool_call_scalar_arguments": {
        "type": "tool_call",
        "tool_name": "t",
        "tool_call_id": "c",
        "arguments": None,
    },
    "tool_result": {
        "type": "tool_result",
        "tool_call_id": "call-1",
        "result": [1, {"ok": "y"}],
        "success": True,
    },
    "tool_result_failed": {
        "type": "tool_result",
        "tool_call_id": "call-1",
        "result": "boom",
        "success": False,
    },
    "metadata": {"type": "metadata", "title": "T"},
    "metadata_full": {
        "type": "metadata",
        "title": "T",
        "description": "d",
        "is_public": True,
        "fork_from_conversation_id": "c",
        "fork_from_message_id": "m",
    },
}

# (content, the field the error message must name)
INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "text_missing": ({"type": "text"}, "text"),
    "text_not_str": ({"type": "text", "text": 5}, "text"),
    "image_missing_url": ({"type": "image", "width": 1}, "image_url"),
    "image_width_str": ({"type": "image", "image_url": "u", "width": "640"}, "width"),
    "image_height_bool": ({"type": "image", "image_url": "u", "height": True}, "height"),
    "image_size_float": ({"type": "image", "image_url": "u", "size_bytes": 1.5}, "size_bytes"),
    "batch_missing_images": ({"type": "image_batch"}, "images"),
    "batch_images_not_list": ({"type": "image_batch", "images": {"image_url": "a"}}, "images"),
    "batch_item_missing_url": ({"type": "image_batch", "images": [{"prompt": "p"}]}, "image_url"),
    "batch_item_prompt_int": (
        {"type": "image_batch", "images": [{"image_url": "a", "prompt": 3}]},
        "prompt",
    ),
    "tool_call_missing_arguments": (
        {"type": "tool_call", "tool_name": "t", "tool_call_id": "c"},
        "arguments",
    ),
    "tool_call_name_int": (
        {"type": "tool_call", "tool_name": 1, "tool_call_id": "c", "arguments": {}},
        "tool_name",
    ),
    "tool_call_missing_id": (
        {"type": "tool_call", "tool_name": "t", "arguments": {}},
        "tool_call_id",
    ),
    "tool_result_success_int": (
        {"type": "tool_result", "tool_call_id": "c", "result": 1, "success": 1},
        "success",
    ),
    "tool_result_missing_result": (
        {"type": "tool_result", "tool_call_id": "c", "success": True},
        "result",
    ),
    "metadata_missing_title": ({"type": "metadata", "description": "d"}, "title"),
    "metadata_public_str": ({"type": "metadata", "title": "t", "is_public": "yes"}, "is_public"),
}


@pytest.mark.parametrize("content", VALID.values(), ids=VALID.keys())
def test_known_type_valid_content_round_trips(content: dict[str, Any]) -> None:
    encoded = normalize(content)
    assert isinstance(encoded, bytes)
    assert msgspec.json.decode(encoded) == content


@pytest.mark.parametrize(("content", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_known_content_names_the_field(content: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        normalize(content)
    assert f"`{field}`" in raised.value.message or f".{field}`" in raised.value.message
    assert content["type"] in raised.value.message
    assert raised.value.status == 422


def test_unknown_type_is_kept_untouched() -> None:
    content = {
        "type": "artifact_v9",
        "url": "s3://bucket/key",
        "nested": {"list": [1, "two", None], "flag": False},
        "text": 7,  # would be invalid for `text`, but this is not `text`
    }
    assert msgspec.json.decode(normalize(content)) == content


@pytest.mark.parametrize(
    "content",
    [{"text": "no type"}, {"type": None, "text": "x"}, {"type": 3}, {"type": ["text"]}],
    ids=["missing", "null", "int", "list"],
)
def test_missing_or_non_string_type_is_rejected(content: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput, match="type"):
        normalize(content)


@pytest.mark.parametrize(
    "content",
    [
        {"type": "text", "text": "hi", "lang": "en", "annotations": [{"start": 0}]},
        {"type": "image", "image_url": "u", "alt": "a cat", "exif": {"iso": 100}},
        {"type": "image_batch", "images": [{"image_url": "a", "seed": 42}], "grid": "2x2"},
        {"type": "tool_result", "tool_call_id": "c", "result": {}, "success": True, "ms": 12},
    ],
    ids=["text", "image", "image_batch", "tool_result"],
)
def test_extra_fields_on_known_types_are_preserved(content: dict[str, Any]) -> None:
    assert msgspec.json.decode(normalize(content)) == content
