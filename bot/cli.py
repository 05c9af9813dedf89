"""Headless commands: `generate` (one turn to files) and `copy-database` (SQLite to PostgreSQL)."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.core import i18n, images
from bot.core.errors import BadInput, FailureKind
from bot.core.events import Completed, Failed, Partial, Started
from bot.core.options import (
    ENGINES,
    ImageOptions,
    InputImage,
    TurnRequest,
    validate_options,
    validate_prompt,
    validate_request,
)
from bot.core.studio import record_turn
from bot.services import Services, default_options, open_services
from bot.settings import Settings
from storage import StorageError

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_MODERATION = 3
EXIT_API = 4
CLI_USER_ID = 0


def exit_code_for(kind: FailureKind) -> int:
    """The documented exit code for a failure kind."""
    if kind is FailureKind.MODERATION:
        return EXIT_MODERATION
    if kind is FailureKind.BAD_REQUEST:
        return EXIT_BAD_INPUT
    return EXIT_API


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `generate`."""
    parser.add_argument("prompt", help="what to draw, or how to change the input image")
    parser.add_argument("--out", required=True, type=Path, help="directory for the images")
    parser.add_argument("--engine", choices=ENGINES, default=None)
    parser.add_argument("--partials", type=int, default=None, help="partial images, 0-3")
    parser.add_argument(
        "--size",
        default=None,
        help="auto, square, portrait, landscape, wide, tall, 1024x1024, 1536x1024, 1024x1536 or WxH",
    )
    parser.add_argument(
        "--quality", default=None, help="auto, low, medium, high (xhigh, max on 2.5+)"
    )
    parser.add_argument("--format", default=None, help="png, jpeg or webp")
    parser.add_argument("--background", default=None, help="auto, opaque or transparent")
    parser.add_argument("--compression", type=int, default=None, help="0-100, jpeg and webp only")
    parser.add_argument("--moderation", default=None, help="auto or low")
    parser.add_argument("--model", default=None, help="image model, e.g. gpt-image-2.6-sunburst")
    parser.add_argument(
        "--image", action="append", type=Path, default=[], help="reference image (repeatable)"
    )
    parser.add_argument("--mask", type=Path, default=None, help="mask for the first --image")
    parser.add_argument("--previous-response-id", default=None, help="continue this response")


@dataclass
class FileSink:
    """Writes each partial and the final image to a directory as they arrive."""

    out: Path
    files: list[str] = field(default_factory=list)
    write_latency: list[float] = field(default_factory=list)

    async def write(self, name: str, data: bytes, arrived: float) -> Path:
        path = self.out / name
        await asyncio.to_thread(path.write_bytes, data)
        self.write_latency.append(time.monotonic() - arrived)
        self.files.append(str(path))
        return path


def _read_input(path: Path, settings: Settings) -> images.PreparedImage:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadInput(
            "cli.unreadable_file", path=str(path), reason=exc.strerror or str(exc)
        ) from exc
    return images.prepare_input_image(
        data,
        filename=path.name,
        max_bytes=settings.max_input_bytes,
        max_pixels=settings.max_input_pixels,
    )


async def _stored_image(services: Services, response_id: str) -> tuple[InputImage, str] | None:
    """The image and prompt of a turn this machine made, when its file is still on disk."""
    turn = await services.store.get_turn_by_response(response_id)
    if turn is None or not turn.image_url:
        return None
    path = Path(turn.image_url)
    if not path.is_file():
        return None
    prepared = await asyncio.to_thread(_read_input, path, services.settings)
    return images.as_input(prepared), turn.prompt


async def generate(args: argparse.Namespace, settings: Settings) -> int:
    """One headless turn: partials and the final written to `--out`, a JSON summary printed."""
    overrides = {
        "size": args.size,
        "quality": args.quality,
        "format": args.format,
        "background": args.background,
        "compression": args.compression,
        "moderation": args.moderation,
        "partials": args.partials,
        "model": args.model,
    }
    engine = args.engine or settings.engine
    options = default_options(settings).merged(overrides).with_preset_size()
    try:
        prompt = validate_prompt(args.prompt)
        validate_options(options)
        prepared = [await asyncio.to_thread(_read_input, p, settings) for p in args.image]
        mask: bytes | None = None
        if args.mask is not None:
            if not prepared:
                raise BadInput("bad.mask_without_image")
            mask_bytes = await asyncio.to_thread(_read_bytes, args.mask)
            mask = await asyncio.to_thread(
                images.prepare_mask,
                mask_bytes,
                prepared[0],
                max_bytes=settings.max_input_bytes,
                max_pixels=settings.max_input_pixels,
            )
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    args.out.mkdir(parents=True, exist_ok=True)
    try:
        services_cm = open_services(settings)
        services = await services_cm.__aenter__()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        return await _generate(services, args, prompt, options, engine, prepared, mask)
    finally:
        await services_cm.__aexit__(None, None, None)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInput(
            "cli.unreadable_file", path=str(path), reason=exc.strerror or str(exc)
        ) from exc


async def _generate(
    services: Services,
    args: argparse.Namespace,
    prompt: str,
    options: ImageOptions,
    engine: str,
    prepared: list[images.PreparedImage],
    mask: bytes | None,
) -> int:
    previous: str | None = args.previous_response_id
    parent: tuple[InputImage, str] | None = None
    if previous and engine == "images":
        parent = await _stored_image(services, previous)
        if parent is None:
            print(
                "error: "
                + BadInput("cli.unknown_previous_image", response_id=previous).localized("en"),
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
    request = TurnRequest(
        prompt=prompt,
        options=options,
        images=tuple(images.as_input(p) for p in prepared),
        mask=mask,
        previous_response_id=previous if engine == "responses" else None,
        parent_image=parent[0] if parent else None,
        parent_prompt=parent[1] if parent else None,
        user_hash=hashlib.sha256(b"cli").hexdigest(),
    )
    try:
        validate_request(request)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

    async def reseed() -> tuple[InputImage, str] | None:
        return await _stored_image(services, previous) if previous else None

    sink = FileSink(args.out)
    notes: list[str] = [note for p in prepared if (note := p.note)]
    async for event in services.runner.run(request, engine=engine, reseed=reseed):
        arrived = time.monotonic()
        if isinstance(event, Started) and event.reseeded:
            notes.append("note.reseeded")
        elif isinstance(event, Partial):
            await sink.write(f"partial-{event.index}.{event.format}", event.image, arrived)
        elif isinstance(event, Completed):
            path = await sink.write(f"image.{event.format}", event.image, arrived)
            await _record(services, event, request, path)
            summary = {
                "response_id": event.response_id,
                "revised_prompt": event.revised_prompt,
                "usage": event.usage.as_dict(),
                "cost_usd": event.cost,
                "files": sink.files,
                "text": event.text,
                "engine": engine,
                "model": event.model,
                "seconds": round(event.seconds, 3),
                "notes": [images_note(n) for n in notes],
                "write_ms": [round(s * 1000, 3) for s in sink.write_latency],
            }
            print(json.dumps(summary, ensure_ascii=False))
            return EXIT_OK
        elif isinstance(event, Failed):
            print(f"error ({event.kind.value}): {event.message}", file=sys.stderr)
            if event.detail:
                log.info("failure detail: %s", event.detail)
            return exit_code_for(event.kind)
    print("error: the turn ended without a result", file=sys.stderr)
    return EXIT_API


def images_note(key: str) -> str:
    """A note key rendered in English."""
    return i18n.t("en", key) if i18n.has_key(key) else key


async def _record(services: Services, done: Completed, request: TurnRequest, path: Path) -> None:
    """Remember the turn (so it can be continued) and charge its usage."""
    await record_turn(
        services.store,
        done,
        options=request.options,
        prompt=request.prompt,
        parent_response_id=request.previous_response_id,
        channel_id=0,
        guild_id=None,
        user_id=CLI_USER_ID,
        image_url=str(path.resolve()),
    )


def add_copy_database_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `copy-database`."""
    parser.add_argument(
        "--to", required=True, metavar="URL", help="the PostgreSQL database: postgresql://..."
    )
    parser.add_argument(
        "--from",
        dest="source",
        default=None,
        metavar="URL",
        help="the SQLite database (default: DATABASE_URL), sqlite:///path/to/bot.db",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="empty the PostgreSQL database first if it already holds data",
    )


async def copy_database(
    args: argparse.Namespace, settings: Settings, *, out: Callable[[str], object] = print
) -> int:
    """Copy the SQLite database into PostgreSQL; 0 when done, 2 for bad input, 1 on failure."""
    from storage import describe_database, sqlite_path_from_url
    from storage.copy import TargetNotEmpty, copy_sqlite_to_postgres
    from storage.urls import MEMORY, database_backend

    source_url = args.source or settings.database_url
    try:
        if database_backend(args.to) != "postgresql":
            raise ValueError("--to must be a postgresql:// URL")
        if database_backend(source_url) != "sqlite":
            raise ValueError("the source (--from, or DATABASE_URL) must be a sqlite:/// URL")
        path = sqlite_path_from_url(source_url)
        if path == MEMORY:
            raise ValueError("the source must be a SQLite file, not an in-memory database")
    except ValueError as exc:
        out(f"error: {exc}")
        return EXIT_BAD_INPUT
    source, target = describe_database(source_url), describe_database(args.to)
    try:
        copied = await copy_sqlite_to_postgres(path, args.to, overwrite=args.overwrite)
    except TargetNotEmpty as exc:
        out(f"error: {exc}; nothing was copied. Pass --overwrite to replace what it holds.")
        return EXIT_BAD_INPUT
    except StorageError as exc:
        out(f"error: {exc}; nothing was copied")
        return 1
    for table in copied:
        after = f" (next id {table.next_id})" if table.next_id is not None else ""
        out(f"{table.name}: {table.rows} rows{after}")
    out(f"copied {sum(t.rows for t in copied)} rows from {source} to {target}")
    out("set DATABASE_URL to the PostgreSQL URL to run the bot on it")
    return EXIT_OK
