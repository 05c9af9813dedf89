"""One source of truth for what each image model accepts.

Where the installed openai SDK's types say which model families take free `WIDTHxHEIGHT`
sizes, `xhigh`/`max` quality, transparent backgrounds or `input_fidelity`, these tests read it
from the SDK's own docstrings and check the bot's model table (`bot.core.models`) and the
OpenAI stand-in against it. Where the SDK is silent, the table must say which public source it
follows, and the stand-in must agree with the table. The stand-in's parameter lists are
checked against the SDK's request types, and every request the bot can build for an option the
table allows must pass the stand-in's checks.
"""

from __future__ import annotations

import ast
import itertools
import re
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_type_hints

import openai
import pytest
from openai import AsyncOpenAI
from openai.types import file_create_params, image_edit_params, image_generate_params
from openai.types.responses import response_create_params, tool_param

from bot.core.models import BASE_QUALITIES, EXTENDED_QUALITIES, MODELS, RETIRED, STANDARD_SIZES
from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
from bot.core.options import ImageOptions, InputImage, TurnRequest, validate_options
from fakes import _openai_strict as strict
from fakes._openai_strict import check_request
from fakes.openai_api import FakeOpenAI

SDK = Path(openai.__file__).parent
# The request types whose field docstrings describe the image models.
SOURCES = {
    "tool": (SDK / "types/responses/tool_param.py", "ImageGeneration"),
    "generate": (SDK / "types/image_generate_params.py", "ImageGenerateParamsBase"),
    "edit": (SDK / "types/image_edit_params.py", "ImageEditParamsBase"),
}
SNAPSHOTS = re.compile(r"including their `([^`]+)`\s+snapshots")


@cache
def field_docs(source: str) -> dict[str, str]:
    """The attribute docstrings of one SDK TypedDict, by field, with whitespace collapsed."""
    path, name = SOURCES[source]
    tree = ast.parse(path.read_text())
    (cls,) = (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    docs: dict[str, str] = {}
    for field, doc in itertools.pairwise(cls.body):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(doc, ast.Expr)
            and isinstance(doc.value, ast.Constant)
            and isinstance(doc.value.value, str)
        ):
            docs[field.target.id] = " ".join(doc.value.value.split())
    return docs


def names_in(text: str) -> set[str]:
    """The model names quoted in `text`, with the snapshots it says are included."""
    names = set(re.findall(r"`(gpt-image[^`]*|chatgpt-image[^`]*)`", text))
    for snapshot in SNAPSHOTS.findall(text):
        names |= {f"{name}-{snapshot}" for name in names}
    return names


def sentence_with(text: str, needle: str) -> str:
    (sentence,) = (s for s in re.split(r"(?<=\.)\s+(?=[A-Z`])", text) if needle in s)
    return sentence


def sdk_facts(source: str) -> dict[str, Any]:
    """What one SDK type says each model family accepts."""
    docs = field_docs(source)
    size = docs["size"]
    free = names_in(size[: size.index("arbitrary resolutions")])
    extended = names_in(sentence_with(docs["quality"], "also support `xhigh` and `max`"))
    background = docs["background"]
    transparent = names_in(sentence_with(background, "`transparent` backgrounds"))
    preview = names_in(sentence_with(background, "in preview"))
    facts = {"free": free, "extended": extended, "transparent": transparent, "preview": preview}
    if "input_fidelity" in docs:
        fidelity = docs["input_fidelity"]
        both = re.search(r"Supports `high` and `low` on `([^`]+)`", fidelity)
        low_only = re.search(r"`([^`]+)` supports only `low`", fidelity)
        omit = re.search(r"For `([^`]+)`, omit this parameter", fidelity)
        assert both and low_only and omit, fidelity
        facts["fidelity"] = {
            both[1]: {"high", "low"},
            low_only[1]: {"low"},
            omit[1]: set(),
        }
    return facts


def family(name: str) -> set[str]:
    """A model and its dated snapshots in the table (the SDK names families by their base)."""
    return {
        m for m in MODELS if m == name or re.fullmatch(re.escape(name) + r"-\d{4}-\d\d-\d\d", m)
    }


def test_the_sdk_types_agree_with_each_other() -> None:
    tool, generate, edit = (sdk_facts(s) for s in ("tool", "generate", "edit"))
    for key in ("free", "extended", "transparent", "preview"):
        assert tool[key] == generate[key] == edit[key], key
        assert tool[key], f"found no model named for {key}: the docstring changed"
    assert tool["fidelity"] == edit["fidelity"]


def test_the_table_knows_every_model_the_sdk_names() -> None:
    tool_models = set(get_args(get_args(get_type_hints(tool_param.ImageGeneration)["model"])[1]))
    image_models = set(get_args(openai.types.ImageModel))
    assert tool_models <= image_models
    assert image_models == set(MODELS) | set(RETIRED)


def test_free_sizes_and_extended_qualities_follow_the_sdk() -> None:
    facts = sdk_facts("tool")
    assert {m for m, spec in MODELS.items() if spec.free_sizes} == facts["free"]
    assert {m for m, spec in MODELS.items() if spec.qualities == EXTENDED_QUALITIES} == facts[
        "extended"
    ]
    for model, spec in MODELS.items():
        assert spec.qualities in (BASE_QUALITIES, EXTENDED_QUALITIES), model


def test_transparency_follows_the_sdk_and_names_a_source_where_it_is_silent() -> None:
    facts = sdk_facts("tool")
    for model, spec in MODELS.items():
        if model in facts["transparent"]:
            assert spec.transparent, model
        elif model in facts["preview"]:
            # A preview is not on every account: the bot does not offer it.
            assert not spec.transparent, model
        else:
            assert "transparent" in spec.source, f"{model}: which source says so?"


def test_input_fidelity_follows_the_sdk_and_names_a_source_where_it_is_silent() -> None:
    said = sdk_facts("tool")["fidelity"]
    covered: set[str] = set()
    for name, values in said.items():
        for model in family(name):
            assert set(MODELS[model].input_fidelity) == values, model
            covered.add(model)
    for model in set(MODELS) - covered:
        assert "input_fidelity" in MODELS[model].source, f"{model}: which source says so?"


def test_the_stand_in_takes_exactly_the_sdk_s_parameters() -> None:
    def keys(td: Any) -> set[str]:
        return set(td.__required_keys__ | td.__optional_keys__)

    assert strict.RESPONSES_CREATE_PARAMS == keys(
        response_create_params.ResponseCreateParamsStreaming
    )
    assert strict.IMAGE_TOOL_FIELDS == keys(tool_param.ImageGeneration)
    assert strict.IMAGE_MASK_FIELDS == keys(tool_param.ImageGenerationInputImageMask)
    assert strict.IMAGES_GENERATE_PARAMS == keys(image_generate_params.ImageGenerateParamsStreaming)
    edit = keys(image_edit_params.ImageEditParamsStreaming)
    assert strict.IMAGES_EDIT_FIELDS | {"image", "mask", "markup"} == edit
    assert strict.FILES_CREATE_FIELDS | strict.FILES_CREATE_FILES == keys(
        file_create_params.FileCreateParams
    )


def tool_request(model: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": "gpt-5.5",
        "input": "x",
        "tools": [{"type": "image_generation", "model": model, **fields}],
    }


@pytest.mark.parametrize("model", sorted(MODELS))
def test_the_stand_in_follows_the_table_for_every_model(model: str) -> None:
    spec = MODELS[model]
    cases: list[tuple[dict[str, Any], bool]] = [
        ({"size": "1536x864"}, spec.free_sizes),
        ({"quality": "xhigh"}, "xhigh" in spec.qualities),
        ({"quality": "max"}, "max" in spec.qualities),
        ({"background": "transparent", "output_format": "png"}, spec.transparent),
        ({"input_fidelity": "high"}, "high" in spec.input_fidelity),
        ({"input_fidelity": "low"}, "low" in spec.input_fidelity),
    ]
    for fields, accepted in cases:
        error = check_request("POST", "/v1/responses", tool_request(model, **fields), {}, [])
        assert (error is None) == accepted, (model, fields, error and error.body)
        if error is not None:
            (name,) = [k for k in fields if k != "output_format"]
            assert (error.body["code"], error.body["param"]) == (
                "invalid_value",
                f"tools[0].{name}",
            )
        images = {"prompt": "x", "model": model, **fields}
        images.pop("input_fidelity", None)
        if images.keys() - {"prompt", "model"}:
            error = check_request("POST", "/v1/images/generations", images, {}, [])
            assert (error is None) == accepted, (model, fields)


async def test_the_default_model_is_refused_a_free_size_and_xhigh_over_http(
    fake_openai: FakeOpenAI,
) -> None:
    client = AsyncOpenAI(api_key="sk-test", base_url=fake_openai.base_url, max_retries=0)
    try:
        for fields, param in (({"size": "1536x864"}, "size"), ({"quality": "xhigh"}, "quality")):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.images.generate(prompt="x", model="gpt-image-2.6-sunburst", **fields)
            assert (caught.value.code, caught.value.param) == ("invalid_value", param)
    finally:
        await client.close()


def allowed_options() -> list[ImageOptions]:
    """Every combination of options the table lets a user pick, per model (sizes sampled)."""
    options: list[ImageOptions] = []
    for model, spec in MODELS.items():
        sizes = ["auto", *STANDARD_SIZES, *(["1536x864"] if spec.free_sizes else [])]
        backgrounds = ["auto", "opaque", *(["transparent"] if spec.transparent else [])]
        for size, quality, background, fidelity in itertools.product(
            sizes, spec.qualities, backgrounds, [None, *spec.input_fidelity]
        ):
            for fmt, compression in (("png", None), ("webp", 80), ("jpeg", 50)):
                if background == "transparent" and fmt == "jpeg":
                    continue
                option = ImageOptions(
                    model=model,
                    size=size,
                    quality=quality,
                    background=background,
                    format=fmt,
                    compression=compression,
                    moderation="low",
                    input_fidelity=fidelity,
                )
                validate_options(option)
                options.append(option)
    return options


def multipart(params: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The form fields and file parts the SDK sends for an `images.edit` call."""
    form: dict[str, str] = {}
    files: list[str] = []
    for key, value in params.items():
        if key == "image":
            files.append("image[]" if isinstance(value, list) else "image")
        elif key in ("mask", "markup"):
            files.append(key)
        else:
            form[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return form, files


def test_every_request_the_bot_builds_for_allowed_options_passes_the_stand_in() -> None:
    adapter = OpenAIImageClient(ClientConfig(api_key="sk-test", base_url="http://127.0.0.1:9"))
    image = InputImage(data=b"png", mime="image/png", filename="a.png", sha256="0" * 64)
    options = allowed_options()
    assert len(options) > 100
    for option in options:
        for images in ((), (image,), (image, image)):
            request = TurnRequest(prompt="a cat", options=option, images=images, user_hash="u")
            body = adapter.responses_params(request)
            error = check_request("POST", "/v1/responses", body, {}, [])
            assert error is None, (option, error.body if error else None)
            call, params = adapter.images_params(request)
            if call == "generate":
                error = check_request("POST", "/v1/images/generations", params, {}, [])
            else:
                form, files = multipart(params)
                error = check_request("POST", "/v1/images/edits", None, form, files)
            assert error is None, (call, option, error.body if error else None)
