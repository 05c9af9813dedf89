"""Which parameters each OpenAI endpoint takes, and the 400s the API gives for any other.

The real API refuses a parameter it does not know (``unknown_parameter``, naming it in
``param`` with its path, e.g. ``tools[0].n``); a stand-in that ignored them would let a
misspelt option pass every test and fail every real call. The lists follow the request types
of the openai SDK 3.57 (``ResponseCreateParams``, ``tool_param.ImageGeneration``,
``ImageGenerateParams``, ``ImageEditParams``, ``FileCreateParams``); ``tests/test_model_table.py``
checks them against the installed SDK.

Everything here is pure: the stand-in calls :func:`check_request` on every request, and the
test suite calls it again on every request its end-to-end tests recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from fakes._openai_render import ApiError, bad_request, typed_form

RESPONSES_CREATE_PARAMS: Final = frozenset(
    {
        "access_programs",
        "background",
        "background_options",
        "context_management",
        "conversation",
        "image",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
IMAGE_TOOL_FIELDS: Final = frozenset(
    {
        "type",
        "action",
        "background",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "input_fidelity",
        "input_image_mask",
        "model",
        "moderation",
        "output_compression",
        "output_format",
        "partial_images",
        "quality",
        "size",
        "svg",
    }
)
IMAGE_MASK_FIELDS: Final = frozenset({"file_id", "image_url"})
INPUT_IMAGE_FIELDS: Final = frozenset(
    {"type", "detail", "file_id", "image_url", "prompt_cache_breakpoint"}
)
INPUT_TEXT_FIELDS: Final = frozenset({"type", "text", "prompt_cache_breakpoint"})
MESSAGE_FIELDS: Final = frozenset({"type", "role", "content", "phase", "id", "status"})
IMAGES_GENERATE_PARAMS: Final = frozenset(
    {
        "background",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "model",
        "moderation",
        "n",
        "output_compression",
        "output_format",
        "partial_images",
        "prompt",
        "quality",
        "response_format",
        "safety_identifier",
        "size",
        "stream",
        "style",
        "svg",
        "user",
    }
)
# Edits take no `moderation` (and no `style`); the image, mask and markup come as file parts.
IMAGES_EDIT_FIELDS: Final = frozenset(
    {
        "background",
        "complexity",
        "frame_count",
        "frame_duration_ms",
        "input_fidelity",
        "model",
        "n",
        "output_compression",
        "output_format",
        "partial_images",
        "prompt",
        "quality",
        "response_format",
        "safety_identifier",
        "size",
        "stream",
        "svg",
        "user",
    }
)
IMAGES_EDIT_FILES: Final = frozenset({"image", "image[]", "mask", "markup"})
FILES_CREATE_FIELDS: Final = frozenset({"purpose", "expires_after"})
FILES_CREATE_FILES: Final = frozenset({"file"})
# In the SDK for the retired DALL-E models only: "Unsupported for GPT image models". Every model
# the API still serves is a GPT image model, so the API refuses them by name.
LEGACY_IMAGE_PARAMS: Final = frozenset({"response_format", "style"})


def unknown_parameter(path: str) -> ApiError:
    """The API's 400 for a parameter it does not take, naming it by its full path."""
    return bad_request(f"Unknown parameter: '{path}'.", path, "unknown_parameter")


def _check_keys(value: Mapping[str, Any], allowed: Iterable[str], prefix: str) -> None:
    allowed = frozenset(allowed)
    for key in value:
        if key not in allowed:
            raise unknown_parameter(f"{prefix}{key}")


def _check_legacy(values: Mapping[str, Any]) -> None:
    for key in sorted(LEGACY_IMAGE_PARAMS):
        if values.get(key) is not None:
            raise unknown_parameter(key)


def check_responses_body(body: Mapping[str, Any]) -> None:
    """Refuse unknown fields at the top level, in image tools, their masks and input parts."""
    _check_keys(body, RESPONSES_CREATE_PARAMS, "")
    tools = body.get("tools")
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        if isinstance(tool, dict) and tool.get("type") == "image_generation":
            _check_keys(tool, IMAGE_TOOL_FIELDS, f"tools[{index}].")
            mask = tool.get("input_image_mask")
            if isinstance(mask, dict):
                _check_keys(mask, IMAGE_MASK_FIELDS, f"tools[{index}].input_image_mask.")
    items = body.get("input")
    for index, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or (item.get("type") or "message") != "message":
            continue
        _check_keys(item, MESSAGE_FIELDS, f"input[{index}].")
        content = item.get("content")
        for part_index, part in enumerate(content if isinstance(content, list) else []):
            if not isinstance(part, dict):
                continue
            where = f"input[{index}].content[{part_index}]."
            if part.get("type") == "input_image":
                _check_keys(part, INPUT_IMAGE_FIELDS, where)
            elif part.get("type") == "input_text":
                _check_keys(part, INPUT_TEXT_FIELDS, where)


def check_images_generate_body(body: Mapping[str, Any]) -> None:
    """Refuse unknown and legacy (DALL-E only) parameters of ``POST /images/generations``."""
    _check_keys(body, IMAGES_GENERATE_PARAMS, "")
    _check_legacy(body)


def check_images_edit_form(form: Mapping[str, str], file_fields: Iterable[str]) -> None:
    """Refuse unknown fields and file parts of the multipart ``POST /images/edits``."""
    values = typed_form(form)
    _check_keys(values, IMAGES_EDIT_FIELDS, "")
    _check_keys(dict.fromkeys(file_fields), IMAGES_EDIT_FILES, "")
    _check_legacy(values)


def check_files_form(form: Mapping[str, str], file_fields: Iterable[str]) -> None:
    """Refuse unknown fields and file parts of ``POST /files``."""
    _check_keys(typed_form(form), FILES_CREATE_FIELDS, "")
    _check_keys(dict.fromkeys(file_fields), FILES_CREATE_FILES, "")


def check_request(
    method: str,
    path: str,
    json_body: Mapping[str, Any] | None,
    form: Mapping[str, str],
    file_fields: Iterable[str],
) -> ApiError | None:
    """The 400 the API gives for this request's parameters alone, or None when they are fine.

    Covers the names of parameters and, through ``image_params``, their values and what the
    chosen model supports; state (stored responses, files, images' pixels) is not looked at.
    """
    from fakes._openai_render import image_params

    try:
        if method != "POST":
            return None
        if path == "/v1/responses" and json_body is not None:
            check_responses_body(json_body)
            tools = json_body.get("tools")
            for index, tool in enumerate(tools if isinstance(tools, list) else []):
                if isinstance(tool, dict) and tool.get("type") == "image_generation":
                    image_params(
                        tool, type_="invalid_request_error", stream=False, where=f"tools[{index}]."
                    )
        elif path == "/v1/images/generations" and json_body is not None:
            check_images_generate_body(json_body)
            image_params(
                json_body,
                type_="image_generation_user_error",
                stream=json_body.get("stream") is True,
            )
        elif path == "/v1/images/edits":
            check_images_edit_form(form, file_fields)
            values = typed_form(form)
            image_params(
                values, type_="image_generation_user_error", stream=values.get("stream") is True
            )
        elif path == "/v1/files":
            check_files_form(form, file_fields)
    except ApiError as error:
        return error
    return None
