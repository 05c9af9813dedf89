"""The web studio's core pieces as units: signed tokens, the metrics text, the turn tree, the mask."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image, ImageDraw

from bot.core.errors import BadInput, FailureKind
from bot.core.events import Completed, Failed, Started, Usage
from bot.core.metrics import Metrics
from bot.core.tokens import Purpose, TokenError, TokenSigner
from bot.core.webstudio import painted_layer_mask, turn_tree
from storage.base import Job, Turn

KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_carries_its_claims_and_expires() -> None:
    clock = Clock()
    signer = TokenSigner(KEY, clock=clock)
    token = signer.issue(Purpose.PAINT, 42, 7, ttl=600)
    claims = signer.verify(token, Purpose.PAINT)
    assert (claims.subject, claims.user_id, claims.expires_at) == (42, 7, clock.now + 600)
    clock.now += 599.9
    signer.verify(token, Purpose.PAINT)
    clock.now += 0.1
    with pytest.raises(TokenError, match="expired"):
        signer.verify(token, Purpose.PAINT)


def test_forged_and_foreign_tokens_are_refused() -> None:
    signer = TokenSigner(KEY, clock=Clock())
    token = signer.issue(Purpose.PAINT, 42, 7, ttl=600)
    body, signature = token.split(".")
    # Another turn in the claims, the old signature: the HMAC no longer matches.
    other = TokenSigner(KEY, clock=Clock()).issue(Purpose.PAINT, 43, 7, ttl=600).split(".")[0]
    # One character of the signature changed: the first, which carries six whole bits (the
    # last one's padding bits may not change the bytes at all).
    flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
    for forged in (
        f"{other}.{signature}",
        f"{body}.{flipped}",
        f"{body}.",
        body,
        token + ".x",
        "x" * 600,
        token.replace(".", "é"),
    ):
        with pytest.raises(TokenError):
            signer.verify(forged, Purpose.PAINT)
    # Signed by another process's key (a restart), or for another purpose.
    with pytest.raises(TokenError, match="signature"):
        TokenSigner(b"j" * 32, clock=Clock()).verify(token, Purpose.PAINT)
    with pytest.raises(TokenError, match="purpose"):
        signer.verify(token, Purpose.GALLERY)


def test_a_spent_token_works_once_and_a_refund_gives_it_back() -> None:
    signer = TokenSigner(KEY, clock=Clock())
    token = signer.issue(Purpose.PAINT, 1, 2, ttl=600)
    claims = signer.verify(token, Purpose.PAINT)
    signer.spend(claims)
    with pytest.raises(TokenError, match="used"):
        signer.verify(token, Purpose.PAINT)
    with pytest.raises(TokenError, match="used"):
        signer.spend(claims)
    signer.refund(claims)
    assert signer.verify(token, Purpose.PAINT) == claims


def _job() -> Job:
    return Job(1, "region", "running", 1, 2, 3, {}, "en", None, 1, None, 0.0, 0.0, None)


class NullSink:
    async def queued(self, position: int) -> None: ...

    async def started(self, event: Started) -> None: ...

    async def partial(self, event: object) -> None: ...

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        return 1, None

    async def failed(self, event: Failed, job: Job) -> None: ...

    async def cancelled(self, job: Job) -> None: ...


LINE = re.compile(
    r'^[a-z_:][a-z0-9_:]*(\{[a-z_]+="[^"\\]*(\\.[^"\\]*)*"(,[a-z_]+="[^"]*")*\})? \S+$'
)


def check_exposition(text: str) -> dict[str, float]:
    """Parse the text format strictly enough to catch a malformed line; return the samples."""
    samples: dict[str, float] = {}
    declared: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if parts[1] == "TYPE":
                assert parts[3] in ("counter", "gauge", "histogram"), line
                declared.add(parts[2])
            continue
        assert LINE.match(line), f"malformed sample line: {line!r}"
        name, value = line.rsplit(" ", 1)
        base = re.sub(r"(_bucket|_sum|_count)$", "", name.split("{")[0])
        assert base in declared, f"{name} has no TYPE line"
        samples[name] = float(value)
    return samples


async def test_a_metered_sink_counts_a_job_in_the_text_format() -> None:
    metrics = Metrics()
    metrics.watch_queue(lambda: 3, lambda: 1)
    now = [10.0]
    from bot.core.metrics import MeteredSink

    sink = MeteredSink(NullSink(), metrics, _job(), clock=lambda: now[0])  # type: ignore[arg-type]
    now[0] = 10.5
    await sink.started(Started(engine="responses", model="m"))
    now[0] = 11.0
    from bot.core.events import Partial

    await sink.partial(Partial(0, b"", "png"))
    now[0] = 13.0
    done = Completed(b"", "png", "r", None, Usage(), 0.25, model="m", engine="responses")
    await sink.completed(done, None)  # type: ignore[arg-type]
    failing = MeteredSink(NullSink(), metrics, _job(), clock=lambda: now[0])  # type: ignore[arg-type]
    await failing.started(Started(engine="images", model="m"))
    await failing.failed(Failed(FailureKind.RATE_LIMITED, "fail.rate_limited"), _job())
    metrics.discord_status(429)
    metrics.discord_status(200)
    samples = check_exposition(metrics.render())
    assert samples["imagine_jobs_queued"] == 3 and samples["imagine_jobs_running"] == 1
    # One job waited 0.5 s, the other none.
    assert samples['imagine_job_wait_seconds_bucket{le="0.25"}'] == 1
    assert samples['imagine_job_wait_seconds_bucket{le="0.5"}'] == 2
    assert samples["imagine_job_wait_seconds_sum"] == 0.5
    assert samples['imagine_job_first_partial_seconds_sum{engine="responses",model="m"}'] == 0.5
    key = 'engine="responses",model="m",outcome="completed"'
    assert samples[f"imagine_job_duration_seconds_sum{{{key}}}"] == 2.5
    assert samples[f'imagine_job_duration_seconds_bucket{{{key},le="2.5"}}'] == 1
    assert samples[f'imagine_job_duration_seconds_bucket{{{key},le="1"}}'] == 0
    assert samples[f'imagine_job_duration_seconds_bucket{{{key},le="+Inf"}}'] == 1
    assert samples['imagine_openai_responses_total{status="completed"}'] == 1
    assert samples['imagine_openai_responses_total{status="rate_limited"}'] == 1
    assert samples['imagine_cost_usd_total{engine="responses",model="m"}'] == 0.25
    assert samples["imagine_discord_rate_limited_total"] == 1
    assert samples['imagine_discord_http_responses_total{status="200"}'] == 1


def test_label_values_are_escaped() -> None:
    metrics = Metrics()
    metrics.cost.inc(1, engine='a"b\\c\nd', model="m")
    assert 'engine="a\\"b\\\\c\\nd"' in metrics.render()
    check_exposition(metrics.render())


def _turn(turn_id: int, response: str, parent: str | None) -> Turn:
    return Turn(
        turn_id, 5, 1, 2, None, response, parent, f"p{turn_id}", None, {}, "responses", "m",
        {}, 0.01, "completed", None, float(turn_id), {"seconds": 1.5},
    )  # fmt: skip


def test_the_turn_tree_puts_branches_under_their_parent() -> None:
    turns = [
        _turn(1, "r1", None),
        _turn(2, "r2", "r1"),
        _turn(3, "r3", "r2"),
        _turn(4, "r4", "r1"),  # a reply to the first image: a branch
        _turn(5, "r5", "r_gone"),  # its parent was deleted: a root
    ]
    nodes = turn_tree(list(reversed(turns)))
    assert [(n.turn_id, n.parent_id, n.depth) for n in nodes] == [
        (1, None, 0),
        (2, 1, 1),
        (3, 2, 2),
        (4, 1, 1),
        (5, None, 0),
    ]
    assert nodes[0].children == 2 and nodes[0].seconds == 1.5


def _layer(size: tuple[int, int], box: tuple[int, int, int, int] | None) -> bytes:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    if box is not None:
        ImageDraw.Draw(im).rectangle(box, fill=(255, 0, 80, 255))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def test_a_painted_layer_becomes_a_mask_transparent_exactly_where_painted() -> None:
    mask = painted_layer_mask(
        _layer((64, 48), (10, 5, 20, 30)), 64, 48, max_bytes=10**6, max_pixels=10**6
    )
    with Image.open(io.BytesIO(mask)) as im:
        assert im.mode == "RGBA" and im.size == (64, 48)
        alpha = im.getchannel("A")
        for x in range(64):
            for y in range(48):
                inside = 10 <= x <= 20 and 5 <= y <= 30
                assert alpha.getpixel((x, y)) == (0 if inside else 255), (x, y)


def test_a_painted_layer_is_checked_before_it_is_used() -> None:
    with pytest.raises(BadInput) as nothing:
        painted_layer_mask(_layer((64, 48), None), 64, 48, max_bytes=10**6, max_pixels=10**6)
    assert nothing.value.key == "mask.nothing_to_edit"
    with pytest.raises(BadInput) as wrong:
        painted_layer_mask(
            _layer((48, 64), (1, 1, 5, 5)), 64, 48, max_bytes=10**6, max_pixels=10**6
        )
    assert wrong.value.key == "mask.wrong_size"
    with pytest.raises(BadInput) as large:
        painted_layer_mask(_layer((64, 48), (1, 1, 5, 5)), 64, 48, max_bytes=50, max_pixels=10**6)
    assert large.value.key == "images.too_large_bytes"
    with pytest.raises(BadInput) as not_png:
        painted_layer_mask(b"GIF89a" + b"\0" * 40, 64, 48, max_bytes=10**6, max_pixels=10**6)
    assert not_png.value.key == "images.not_an_image"
