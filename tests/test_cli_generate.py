"""`python -m bot generate` against the OpenAI stand-in: real SDK, real sockets, its own process."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from fakes.openai_api import FakeOpenAI, Fault, Timeline
from tests.conftest import cli_env, run_cli, wait_until


def png(size: tuple[int, int] = (1024, 1024), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def difference(a: Path | bytes, b: Path | bytes) -> float:
    """Mean absolute pixel difference of two images (0 = identical)."""

    def load(x: Path | bytes) -> Image.Image:
        return (
            Image.open(x if isinstance(x, Path) else io.BytesIO(x))
            .convert("RGB")
            .resize((256, 256))
        )

    return sum(ImageStat.Stat(ImageChops.difference(load(a), load(b))).mean) / 3


async def test_partials_are_written_before_the_final(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    fake_openai.set_timeline(Timeline(first_partial=0.2, between_partials=0.4, final=0.8))
    out = tmp_path / "out"
    seen: dict[str, bool] = {}

    async def watch() -> None:
        await wait_until(lambda: (out / "partial-0.png").exists(), timeout=20, what="partial-0.png")
        seen["final_when_partial_0"] = (out / "image.png").exists()
        await wait_until(lambda: (out / "partial-1.png").exists(), timeout=20, what="partial-1.png")
        seen["final_when_partial_1"] = (out / "image.png").exists()

    result = await run_cli(
        ["generate", "a red fox in the snow", "--out", str(out), "--partials", "2"],
        cli_env(fake_openai, tmp_path),
        tmp_path,
        while_running=watch,
    )
    assert result.code == 0, result.stderr
    assert seen == {"final_when_partial_0": False, "final_when_partial_1": False}
    summary = json.loads(result.stdout)
    assert summary["response_id"].startswith("resp_")
    assert summary["cost_usd"] > 0
    assert summary["usage"]["image_output_tokens"] > 0
    assert summary["files"] == [
        str(out / "partial-0.png"),
        str(out / "partial-1.png"),
        str(out / "image.png"),
    ]
    final = Image.open(out / "image.png")
    assert final.size == (1024, 1024)
    assert difference(out / "partial-0.png", out / "image.png") > 0
    body = fake_openai.requests[-1].json
    assert body is not None and body["stream"] is True
    assert body["tools"][0]["partial_images"] == 2


async def test_continuation_sends_the_previous_id_and_builds_on_the_parent(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = cli_env(fake_openai, tmp_path)
    first = await run_cli(
        ["generate", "a lighthouse at dusk", "--out", str(tmp_path / "a"), "--partials", "0"],
        env,
        tmp_path,
    )
    assert first.code == 0, first.stderr
    parent_id = json.loads(first.stdout)["response_id"]
    second = await run_cli(
        [
            "generate",
            "add a full moon",
            "--out",
            str(tmp_path / "b"),
            "--previous-response-id",
            parent_id,
            "--partials",
            "0",
        ],
        env,
        tmp_path,
    )
    assert second.code == 0, second.stderr
    body = fake_openai.requests[-1].json
    assert body is not None and body["previous_response_id"] == parent_id
    fresh = await run_cli(
        ["generate", "add a full moon", "--out", str(tmp_path / "c"), "--partials", "0"],
        env,
        tmp_path,
    )
    assert fresh.code == 0
    child_vs_parent = difference(tmp_path / "b" / "image.png", tmp_path / "a" / "image.png")
    fresh_vs_parent = difference(tmp_path / "c" / "image.png", tmp_path / "a" / "image.png")
    assert child_vs_parent < fresh_vs_parent / 2


async def test_images_engine_continues_from_the_stored_parent_image(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    env = cli_env(fake_openai, tmp_path, {"ENGINE": "images"})
    first = await run_cli(
        ["generate", "a teapot", "--out", str(tmp_path / "a"), "--partials", "1"], env, tmp_path
    )
    assert first.code == 0, first.stderr
    assert fake_openai.requests[-1].path == "/v1/images/generations"
    parent_id = json.loads(first.stdout)["response_id"]
    second = await run_cli(
        [
            "generate",
            "make it blue",
            "--out",
            str(tmp_path / "b"),
            "--previous-response-id",
            parent_id,
        ],
        env,
        tmp_path,
    )
    assert second.code == 0, second.stderr
    edit = fake_openai.requests[-1]
    assert edit.path == "/v1/images/edits"
    sent = edit.files.get("image") or edit.files.get("image[]")
    assert sent and sent[0].data == (tmp_path / "a" / "image.png").read_bytes()
    assert "mainline" not in json.dumps(json.loads(second.stdout)["usage"])


async def test_reference_images_and_mask_go_in_the_right_fields(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    ref1, ref2, mask = tmp_path / "ref1.png", tmp_path / "ref2.png", tmp_path / "mask.png"
    ref1.write_bytes(png())
    ref2.write_bytes(png(color=(20, 200, 20)))
    mask_image = Image.new("L", (1024, 1024), 0)
    mask_image.paste(255, (0, 0, 512, 512))
    mask_image.save(mask)
    env = cli_env(fake_openai, tmp_path)
    args = [
        "generate",
        "put a hat on it",
        "--image",
        str(ref1),
        "--image",
        str(ref2),
        "--mask",
        str(mask),
        "--partials",
        "0",
    ]
    result = await run_cli([*args, "--out", str(tmp_path / "r")], env, tmp_path)
    assert result.code == 0, result.stderr
    body = fake_openai.requests[-1].json
    assert body is not None
    content = body["input"][0]["content"]
    assert [c["type"] for c in content] == ["input_text", "input_image", "input_image"]
    assert content[1]["image_url"].startswith("data:image/png;base64,")
    mask_url = body["tools"][0]["input_image_mask"]["image_url"]
    assert mask_url.startswith("data:image/png;base64,")
    # Only the masked (top-left) quarter changed.
    out = Image.open(tmp_path / "r" / "image.png").convert("RGB")
    original = Image.open(ref1).convert("RGB")
    untouched = ImageChops.difference(
        out.crop((600, 600, 1024, 1024)), original.crop((600, 600, 1024, 1024))
    )
    assert max(ImageStat.Stat(untouched).mean) < 3

    images_env = cli_env(fake_openai, tmp_path, {"ENGINE": "images"})
    result = await run_cli([*args, "--out", str(tmp_path / "i")], images_env, tmp_path)
    assert result.code == 0, result.stderr
    edit = fake_openai.requests[-1]
    assert edit.path == "/v1/images/edits"
    assert len(edit.files["image[]"]) == 2
    assert edit.files["image[]"][0].content_type == "image/png"
    mask_part = edit.files["mask"][0]
    assert Image.open(io.BytesIO(mask_part.data)).mode == "RGBA"


async def test_transparent_output_has_alpha(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    result = await run_cli(
        [
            "generate",
            "a sticker of a cat",
            "--background",
            "transparent",
            "--partials",
            "0",
            "--out",
            str(tmp_path / "t"),
        ],
        cli_env(fake_openai, tmp_path),
        tmp_path,
    )
    assert result.code == 0, result.stderr
    image = Image.open(tmp_path / "t" / "image.png")
    assert image.mode == "RGBA"
    assert image.getextrema()[3][0] == 0


FAULTS = [
    ("moderation_400", 3, "safety system"),
    ("auth_401", 4, "API key"),
    ("quota_429", 4, "out of credit"),
    ("server_500", 4, "Retry"),
    ("error_event_flat", 4, "Retry"),
    ("error_event_nested", 3, "safety system"),
    ("response_failed", 3, "safety system"),
    ("failed_item", 3, "safety system"),
    ("cut_stream", 4, "Retry"),
]


@pytest.mark.parametrize(("kind", "code", "words"), FAULTS)
async def test_each_fault_maps_to_its_exit_code_and_a_clear_message(
    fake_openai: FakeOpenAI, tmp_path: Path, kind: str, code: int, words: str
) -> None:
    fake_openai.queue_fault(Fault(kind, after_events=5))
    result = await run_cli(
        ["generate", "a castle", "--out", str(tmp_path / "o"), "--partials", "2"],
        cli_env(fake_openai, tmp_path),
        tmp_path,
    )
    assert result.code == code, (kind, result.stderr)
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert "sk-test" not in result.stderr + result.stdout


async def test_a_stalled_stream_times_out(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.queue_fault(Fault("stall", after_events=3))
    result = await run_cli(
        ["generate", "a castle", "--out", str(tmp_path / "o")],
        cli_env(fake_openai, tmp_path, {"STREAM_STALL_SECONDS": "1"}),
        tmp_path,
    )
    assert result.code == 4
    assert "took too long" in result.stderr


async def test_rate_limit_waits_and_retries(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.queue_fault(Fault("rate_limit_429", retry_after_ms=50))
    result = await run_cli(
        ["generate", "a castle", "--out", str(tmp_path / "o"), "--partials", "0"],
        cli_env(fake_openai, tmp_path),
        tmp_path,
    )
    assert result.code == 0, result.stderr
    assert len([r for r in fake_openai.requests if r.path == "/v1/responses"]) == 2


BAD_INPUTS = [
    (["--background", "transparent", "--format", "jpeg"], "transparent"),
    (["--model", "dall-e-3"], "retired"),
    (["--size", "123x456", "--model", "gpt-image-1.5"], "not a size"),
    (["--compression", "50"], "jpeg and webp"),
    (["--partials", "5"], "between 0 and 3"),
    (["--quality", "ultra"], "quality"),
]


@pytest.mark.parametrize(("flags", "words"), BAD_INPUTS)
async def test_bad_options_cost_nothing(
    fake_openai: FakeOpenAI, tmp_path: Path, flags: list[str], words: str
) -> None:
    result = await run_cli(
        ["generate", "a cat", "--out", str(tmp_path / "o"), *flags],
        cli_env(fake_openai, tmp_path),
        tmp_path,
    )
    assert result.code == 2
    assert words in result.stderr
    assert fake_openai.requests == []


async def test_bad_files_cost_nothing(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    env = cli_env(fake_openai, tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    small, mask = tmp_path / "small.png", tmp_path / "mask.png"
    small.write_bytes(png((512, 512)))
    Image.new("L", (256, 256), 255).save(mask)
    cases = [
        (["--image", str(text)], "not an image"),
        (["--image", str(tmp_path / "missing.png")], "Cannot read"),
        (["--image", str(small), "--mask", str(mask)], "mask"),
        (["--mask", str(mask)], "mask needs an image"),
    ]
    for flags, words in cases:
        result = await run_cli(
            ["generate", "a cat", "--out", str(tmp_path / "o"), *flags], env, tmp_path
        )
        assert result.code == 2, (flags, result.stderr)
        assert words in result.stderr, (flags, result.stderr)
    long_prompt = await run_cli(
        ["generate", "x" * 32_001, "--out", str(tmp_path / "o")], env, tmp_path
    )
    assert long_prompt.code == 2 and "32,000" in long_prompt.stderr
    assert fake_openai.requests == []


async def test_files_api_uploads_a_reference_once_and_reuses_it(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    ref = tmp_path / "ref.png"
    ref.write_bytes(png())
    env = cli_env(fake_openai, tmp_path, {"USE_FILES_API": "true"})
    for out in ("a", "b"):
        result = await run_cli(
            [
                "generate",
                "use this",
                "--image",
                str(ref),
                "--partials",
                "0",
                "--out",
                str(tmp_path / out),
            ],
            env,
            tmp_path,
        )
        assert result.code == 0, result.stderr
    uploads = [r for r in fake_openai.requests if r.path == "/v1/files"]
    assert len(uploads) == 1
    assert uploads[0].form["purpose"] == "vision"
    bodies = [r.json for r in fake_openai.requests if r.path == "/v1/responses" and r.json]
    file_ids = [b["input"][0]["content"][1].get("file_id") for b in bodies]
    assert file_ids[0] == file_ids[1] and file_ids[0] in fake_openai.files


async def test_doctor_checks_everything_in_plain_words(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    from fakes.discord_api import FakeDiscord

    async with FakeDiscord() as discord:
        env = cli_env(
            fake_openai,
            tmp_path,
            {"DISCORD_TOKEN": discord.token, "DISCORD_API_BASE_URL": discord.api_base},
        )
        good = await run_cli(["doctor"], env, tmp_path)
        assert good.code == 0, good.stdout + good.stderr
        # Four checks pass; the Korean font check passes, or warns on a host without one.
        assert good.stdout.count("[ok]") + good.stdout.count("[warn]") == 5
        assert good.stdout.count("[ok]") >= 4 and "all good" in good.stdout
        bad = await run_cli(["doctor"], {**env, "DISCORD_TOKEN": "wrong-token-123456"}, tmp_path)
        assert bad.code == 1
        assert "[FAIL] discord" in bad.stdout and "wrong-token" not in bad.stdout + bad.stderr
    missing = await run_cli(
        ["doctor"], {k: v for k, v in env.items() if k != "OPENAI_API_KEY"}, tmp_path
    )
    assert "[FAIL] openai: OPENAI_API_KEY is not set" in missing.stdout


BAD_DEFAULTS = [
    ({"IMAGE_MODEL": "dall-e-3"}, "IMAGE_MODEL", "retired"),
    ({"IMAGE_MODEL": "gpt-image-2", "DEFAULT_SIZE": "1000x1000"}, "DEFAULT_SIZE", "size rules"),
    ({"IMAGE_MODEL": "gpt-image-1.5", "DEFAULT_QUALITY": "xhigh"}, "DEFAULT_QUALITY", "quality"),
    ({"IMAGE_MODEL": "gpt-image-1.5", "DEFAULT_SIZE": "2048x1152"}, "DEFAULT_SIZE", "not a size"),
]


async def test_doctor_refuses_defaults_the_model_would_refuse(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> None:
    """Every other check passes, so only the defaults can make doctor fail here."""
    from fakes.discord_api import FakeDiscord

    async with FakeDiscord() as discord:
        env = cli_env(
            fake_openai,
            tmp_path,
            {"DISCORD_TOKEN": discord.token, "DISCORD_API_BASE_URL": discord.api_base},
        )
        results = await asyncio.gather(
            *(run_cli(["doctor"], {**env, **extra}, tmp_path) for extra, _, _ in BAD_DEFAULTS)
        )
    for (extra, variable, words), result in zip(BAD_DEFAULTS, results, strict=True):
        report = result.stdout + result.stderr
        assert result.code == 1, (extra, report)
        assert "all good" not in report, extra
        (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("[FAIL]")]
        assert line.startswith("[FAIL] defaults: change " + variable), (extra, line)
        assert words in line, (extra, line)
        assert "Traceback" not in report
