"""`python -m bot demo` works from a clean checkout: no accounts, no network."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fakes.openai_api import FakeOpenAI
from tests.conftest import cli_env, run_cli


async def test_demo_writes_a_transcript_and_every_image(
    tmp_path: Path, fake_openai: FakeOpenAI
) -> None:
    out = tmp_path / "demo"
    env = cli_env(fake_openai, tmp_path, {"DATABASE_URL": "sqlite:////nonexistent/never/used.db"})
    result = await run_cli(["demo", "--out", str(out)], env, tmp_path, timeout=120)
    assert result.code == 0, result.stderr
    transcript = (out / "transcript.md").read_text()
    for heading in (
        "/imagine with partial images",
        "follow-up in the thread",
        "branches from it",
        "Edit region",
    ):
        assert heading in transcript
    images = sorted(p.name for p in out.glob("*.png"))
    assert sum("partial" in name for name in images) >= 4
    assert sum(name.endswith("-image.png") for name in images) == 4
    assert any("grid" in name for name in images)
    for name in images:
        assert f"]({name})" in transcript
        Image.open(out / name).verify()
    # Step 2 continued the thread; step 3 branched from the first image; step 4 sent a mask.
    sent = transcript.split("## What was sent to OpenAI")[1].strip().splitlines()
    ids = [line.split("`")[1] for line in sent]
    assert ids[0] == "None" and ids[1] == ids[2] != "None" and ids[3] not in ("None", ids[1])
    assert "+ mask" in sent[3]
    assert fake_openai.requests == []
