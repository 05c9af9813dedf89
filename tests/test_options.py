"""Options are validated before anything is sent, with one specific message per mistake."""

from __future__ import annotations

import pytest

from bot.core.errors import BadInput
from bot.core.models import canonical_size, parse_size, size_rule_violation
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
    # The SDK names the 2 and 2.5 families for free sizes, and 2.5 alone for xhigh/max.
    ({"model": "gpt-image-2.6-sunburst", "size": "1536x864"}, "bad.unknown_size"),
    ({"model": "gpt-image-2.6-flare", "quality": "xhigh"}, "bad.unknown_quality"),
    ({"model": "gpt-image-2", "quality": "max"}, "bad.unknown_quality"),
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
        {"model": "gpt-image-2.5-sunburst", "size": "3840x2160", "quality": "max"},
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


INVISIBLE = {
    "zero-width space": "\u200b",
    "zero-width non-joiner and joiner": "\u200c\u200d",
    "word joiner": "\u2060",
    "byte order mark": "\ufeff",
    "soft hyphen": "\u00ad",
    "hangul filler": "\u3164",
    "halfwidth hangul filler": "\uffa0",
    "braille blank": "\u2800",
    "mongolian vowel separator": "\u180e",
    "right-to-left override": "\u202e",
    "tag characters": "\U000e0063\U000e0061\U000e0074",
    "variation selector": "\ufe0f",
    "combining grapheme joiner": "\u034f",
    "line separator": "\u2028",
    "mixed, around spaces": " \u200b \u3164\u2800\u00a0\ufeff ",
}


@pytest.mark.parametrize("text", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_a_prompt_with_nothing_visible_is_refused(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        validate_prompt(text)
    assert caught.value.key in ("bad.prompt_invisible", "bad.prompt_empty")


@pytest.mark.parametrize("text", ["a", "고양이", "🐱", "❤️", "e\u0301", "\u200bcat\u200b", "٣"])
def test_a_prompt_with_one_visible_character_is_kept(text: str) -> None:
    assert validate_prompt(f" {text} ") == text


SIZES_FORGIVEN = {
    "1024X1024": "1024x1024",
    " 1536x1024": "1536x1024",
    "1536x1024 \t": "1536x1024",
    "AUTO": "auto",
    " auto ": "auto",
    "01536x01024": "1536x1024",
}
SIZES_REFUSED = [
    "1_024x1_024",
    "１０２４x１０２４",
    "١٠٢٤x١٠٢٤",
    "1024ｘ1024",
    "1024 x 1024",
    "1024x1024x1024",
    "1024*1024",
    "+1024x1024",
    "1024x",
    "x1024",
    "1024x1024\u200b",
    "9" * 5000 + "x1024",
]


@pytest.mark.parametrize(("typed", "sent"), SIZES_FORGIVEN.items())
def test_a_size_with_stray_spaces_or_capitals_is_sent_in_the_apis_spelling(
    typed: str, sent: str
) -> None:
    assert canonical_size(typed) == sent
    for model in ("gpt-image-2", "gpt-image-1.5"):
        options = ImageOptions(model=model).merged({"size": typed})
        assert options.size == sent
        validate_options(options)


@pytest.mark.parametrize("typed", SIZES_REFUSED)
def test_a_size_the_api_would_refuse_is_refused_before_sending(typed: str) -> None:
    assert canonical_size(typed) == typed
    for model, key in (("gpt-image-2", "bad.size_rules"), ("gpt-image-1.5", "bad.unknown_size")):
        with pytest.raises(BadInput) as caught:
            validate_options(ImageOptions(model=model).merged({"size": typed}))
        assert caught.value.key == key
    with pytest.raises(ValueError):
        parse_size(typed)


def test_only_the_apis_spelling_passes_the_size_rules_unmerged() -> None:
    assert size_rule_violation("1536x864") is None
    assert parse_size("1536x864") == (1536, 864)
    for loose in ("1536X864", " 1536x864", "01536x864"):
        assert size_rule_violation(loose) == "write it as WIDTHxHEIGHT, e.g. 1536x864"
        with pytest.raises(BadInput):
            validate_options(ImageOptions(model="gpt-image-2", size=loose))
    assert size_rule_violation("99999x1024") == "the largest size is 3840x2160"


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
