"""Options are validated before anything is sent, with one specific message per mistake."""

from __future__ import annotations

import pytest

from bot.core.errors import BadInput
from bot.core.options import (
    MAX_PROMPT_CHARS,
    ImageOptions,
    InputImage,
    TurnRequest,
    validate_options,
    validate_prompt,
    validate_request,
)

BAD_OPTIONS = [
    ({"background": "transparent", "format": "jpeg"}, "bad.transparent_jpeg"),
    ({"compression": 50, "format": "png"}, "bad.compression_png"),
    ({"compression": 101, "format": "jpeg"}, "bad.compression_range"),
    ({"partials": 4}, "bad.partials_range"),
    ({"partials": -1}, "bad.partials_range"),
    ({"model": "dall-e-3"}, "bad.retired_model"),
    ({"model": "dall-e-2"}, "bad.retired_model"),
    ({"model": "gpt-image-1"}, "bad.retired_model"),
    ({"model": "gpt-imagine-9"}, "bad.unknown_model"),
    ({"model": "gpt-image-1.5", "size": "2048x2048"}, "bad.unknown_size"),
    ({"model": "gpt-image-2", "size": "1000x1000"}, "bad.size_rules"),
    ({"model": "gpt-image-2", "size": "4096x1024"}, "bad.size_rules"),
    ({"model": "gpt-image-2", "size": "3840x3840"}, "bad.size_rules"),
    ({"model": "gpt-image-2", "size": "big"}, "bad.size_rules"),
    ({"model": "gpt-image-1.5", "quality": "max"}, "bad.unknown_quality"),
    ({"format": "gif"}, "bad.unknown_format"),
    ({"background": "green"}, "bad.unknown_background"),
    ({"moderation": "none"}, "bad.unknown_moderation"),
    ({"model": "gpt-image-2", "background": "transparent"}, "bad.transparent_model"),
    ({"model": "gpt-image-1-mini", "input_fidelity": "high"}, "bad.input_fidelity"),
    ({"model": "gpt-image-2", "input_fidelity": "low"}, "bad.input_fidelity"),
]


@pytest.mark.parametrize(("changes", "key"), BAD_OPTIONS)
def test_bad_options_are_rejected_with_their_own_message(
    changes: dict[str, object], key: str
) -> None:
    with pytest.raises(BadInput) as caught:
        validate_options(ImageOptions().merged(changes))
    assert caught.value.key == key
    assert caught.value.localized("ko") != caught.value.localized("en")


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"model": "gpt-image-2", "size": "1536x864"},
        {"model": "gpt-image-2.6-sunburst", "size": "3840x2160", "quality": "max"},
        {"format": "webp", "compression": 0, "background": "transparent"},
        {"format": "jpeg", "compression": 100},
        {"model": "gpt-image-1.5", "input_fidelity": "high", "size": "1024x1536"},
        {"partials": 0},
        {"partials": 3},
    ],
)
def test_good_options_pass(changes: dict[str, object]) -> None:
    validate_options(ImageOptions().merged(changes))


def test_jpg_is_read_as_jpeg_and_none_keeps_the_default() -> None:
    options = ImageOptions(quality="high").merged({"format": "jpg", "quality": None, "unknown": 1})
    assert options.format == "jpeg"
    assert options.quality == "high"


def test_prompt_limits() -> None:
    assert validate_prompt("  a cat  ") == "a cat"
    with pytest.raises(BadInput) as empty:
        validate_prompt("   ")
    assert empty.value.key == "bad.prompt_empty"
    with pytest.raises(BadInput) as long:
        validate_prompt("x" * (MAX_PROMPT_CHARS + 1))
    assert long.value.key == "bad.prompt_too_long"
    assert "32,000" in str(long.value)


def test_allowed_models_of_a_server() -> None:
    with pytest.raises(BadInput) as caught:
        validate_options(ImageOptions(model="gpt-image-2"), allowed_models=["gpt-image-1-mini"])
    assert caught.value.key == "bad.model_not_allowed"


def test_request_level_checks() -> None:
    image = InputImage(data=b"x", mime="image/png", filename="a.png", sha256="0")
    with pytest.raises(BadInput) as mask_only:
        validate_request(TurnRequest(prompt="p", options=ImageOptions(), mask=b"m"))
    assert mask_only.value.key == "bad.mask_without_image"
    validate_request(TurnRequest(prompt="p", options=ImageOptions(), mask=b"m", images=(image,)))
    validate_request(
        TurnRequest(prompt="p", options=ImageOptions(), mask=b"m", previous_response_id="resp_1")
    )
    with pytest.raises(BadInput) as many:
        validate_request(TurnRequest(prompt="p", options=ImageOptions(), images=(image,) * 17))
    assert many.value.key == "bad.too_many_images"
