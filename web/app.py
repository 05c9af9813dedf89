"""The web studio: one aiohttp app in the bot's process, talking to the core through the Studio.

Routes: `/paint/<token>` (the painter; POST sends the painted layer), `/gallery/<token>/` (a
thread's tree of images), `/healthz`, `/readyz`, `/metrics`, and `/static/<file>` from a fixed
list read at start-up (nothing outside the app's folder can be named).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

from bot.core.errors import BotError
from bot.core.i18n import SUPPORTED_LOCALES, normalize_locale
from bot.core.metrics import Metrics
from bot.core.studio import Studio
from bot.core.tokens import TokenError
from web import pages

log = logging.getLogger(__name__)

STATIC: Final = Path(__file__).resolve().parent / "static"
STATIC_TYPES: Final = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
}
# Scripts and styles from this app only: no inline script, nothing from elsewhere; the image is
# served by the app; tokens in the address never leave in a Referer.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
PROMPT_LIMIT: Final = 4000
LAG_PROBE_SECONDS: Final = 0.5
MIME: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def _load_static() -> dict[str, tuple[bytes, str]]:
    files: dict[str, tuple[bytes, str]] = {}
    for path in sorted(STATIC.iterdir()):
        kind = STATIC_TYPES.get(path.suffix)
        if path.is_file() and not path.is_symlink() and kind is not None:
            files[path.name] = (path.read_bytes(), kind)
    return files


class WebStudio:
    """The app and its site; `start` binds it, `close` stops it."""

    def __init__(
        self,
        studio: Studio,
        metrics: Metrics,
        *,
        gateway_ready: Callable[[], bool],
        host: str = "127.0.0.1",
        port: int = 0,
        max_upload_bytes: int = 50 * 1024 * 1024,
    ) -> None:
        self.studio = studio
        self.metrics = metrics
        self._gateway_ready = gateway_ready
        self.host = host
        self.port = port
        self.max_upload_bytes = max_upload_bytes
        self._static = _load_static()
        self._runner: web.AppRunner | None = None
        self._probe: asyncio.Task[None] | None = None
        self.app = self.build()

    # --- life -----------------------------------------------------------------------------

    def build(self) -> web.Application:
        """The aiohttp application (tests may serve it themselves)."""
        # The form's other fields are small; past this aiohttp refuses the body while reading.
        app = web.Application(
            client_max_size=self.max_upload_bytes + 64 * 1024,
            middlewares=[self._headers],
        )
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics_text),
                web.get("/static/{name}", self.static),
                web.get("/favicon.ico", self.no_icon),
                web.get("/paint/{token}", self.paint),
                web.get("/paint/{token}/image", self.paint_image),
                web.post("/paint/{token}", self.paint_submit),
                web.get("/gallery/{token}", self.gallery_slash),
                web.get("/gallery/{token}/", self.gallery),
                web.get("/gallery/{token}/thumb/{turn}", self.gallery_image),
                web.get("/gallery/{token}/image/{turn}", self.gallery_image),
            ]
        )
        return app

    async def start(self) -> None:
        """Bind the site and start the event-loop lag probe."""
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self._runner = runner
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._probe = asyncio.create_task(self._lag_probe(), name="web-lag-probe")
        log.info("web studio listening on %s:%d", self.host, self.port)

    async def close(self) -> None:
        """Stop serving."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _lag_probe(self) -> None:
        """Measure how late the loop wakes a timer: a starved loop shows here first."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_SECONDS
            await asyncio.sleep(LAG_PROBE_SECONDS)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - due))

    # --- common ---------------------------------------------------------------------------

    @web.middleware
    async def _headers(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            for name, value in SECURITY_HEADERS.items():
                exc.headers.setdefault(name, value)
            raise
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @staticmethod
    def _locale(request: web.Request, fallback: str) -> str:
        asked = request.query.get("lang")
        if asked in SUPPORTED_LOCALES:
            return str(asked)
        return normalize_locale(fallback)

    def _forbidden_page(self, request: web.Request, reason: TokenError) -> web.Response:
        # Why is for the log (never the token itself); the page says the same for every case.
        log.info("web: refused a link (%s) for %s", reason, request.path.split("/")[1])
        locale = self._locale(request, request.headers.get("Accept-Language", "en")[:2])
        return web.Response(
            status=403,
            text=pages.message_page(locale, "page.forbidden_title", "page.forbidden"),
            content_type="text/html",
        )

    def _forbidden_json(
        self, request: web.Request, reason: TokenError, locale: str
    ) -> web.Response:
        log.info("web: refused a paint submission (%s)", reason)
        self.metrics.paint_submissions.inc(outcome="forbidden")
        return web.json_response(
            {"status": "forbidden", "message": pages.t(locale, "page.forbidden")}, status=403
        )

    # --- operations -----------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        """The event loop answers."""
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """Gateway ready, database answering, queue taking jobs: 200; otherwise 503."""
        checks = {"gateway": bool(self._gateway_ready()), **await self.studio.readiness()}
        ready = all(checks.values())
        return web.Response(
            status=200 if ready else 503,
            text=json.dumps({"ready": ready, **checks}, sort_keys=True) + "\n",
            content_type="application/json",
        )

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        response = web.Response(text=self.metrics.render())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def no_icon(self, request: web.Request) -> web.Response:
        """Browsers ask for an icon on every page; there is none, and that is not an error."""
        return web.Response(status=204)

    async def static(self, request: web.Request) -> web.Response:
        """One of the app's own files, by exact name."""
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        response = web.Response(body=body)
        response.headers["Content-Type"] = kind
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    # --- paint ----------------------------------------------------------------------------

    async def paint(self, request: web.Request) -> web.Response:
        """The painter for a valid link; 403 otherwise."""
        try:
            page = await self.studio.paint_page(request.match_info["token"])
        except TokenError as exc:
            return self._forbidden_page(request, exc)
        locale = self._locale(request, page.locale)
        return web.Response(text=pages.paint_page(page, locale), content_type="text/html")

    async def paint_image(self, request: web.Request) -> web.Response:
        """The image to paint on, from the database."""
        try:
            data, fmt = await self.studio.paint_image(request.match_info["token"])
        except TokenError as exc:
            return self._forbidden_page(request, exc)
        except BotError:
            raise web.HTTPNotFound() from None
        response = web.Response(body=data)
        response.headers["Content-Type"] = MIME.get(fmt, "application/octet-stream")
        return response

    async def paint_submit(self, request: web.Request) -> web.Response:
        """Take the painted layer and the instruction; queue the edit as the link's owner."""
        token = request.match_info["token"]
        locale = self._locale(request, request.headers.get("Accept-Language", "en")[:2])
        try:
            page = await self.studio.paint_page(token)
        except TokenError as exc:
            return self._forbidden_json(request, exc, locale)
        except BotError as exc:
            return web.json_response(
                {"status": "refused", "message": exc.localized(locale)}, status=404
            )
        locale = self._locale(request, page.locale)
        limit = self.max_upload_bytes
        # Refused from the declared length before a byte of the body is read.
        if request.content_length is not None and request.content_length > limit + 64 * 1024:
            return self._refused(locale, "page.too_large", 413, limit=round(limit / 2**20, 1))
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            return self._refused(locale, "page.too_large", 413, limit=round(limit / 2**20, 1))
        except ValueError:
            return self._refused(locale, "page.bad_upload", 400)
        mask = form.get("mask")
        prompt = form.get("prompt")
        if not isinstance(prompt, str) or not isinstance(mask, web.FileField):
            return self._refused(locale, "page.bad_upload", 400)
        layer = mask.file.read(limit + 1)
        if len(layer) > limit:
            return self._refused(locale, "page.too_large", 413, limit=round(limit / 2**20, 1))
        try:
            job = await self.studio.paint_submit(token, layer, prompt[: PROMPT_LIMIT + 1])
        except TokenError as exc:
            return self._forbidden_json(request, exc, locale)
        except BotError as exc:
            self.metrics.paint_submissions.inc(outcome="refused")
            return web.json_response(
                {"status": "refused", "message": exc.localized(locale)}, status=400
            )
        self.metrics.paint_submissions.inc(outcome="queued")
        log.info("web: paint submission queued as job %s", job.id)
        return web.json_response(
            {"status": "queued", "job": job.id, "message": pages.t(locale, "page.queued")}
        )

    def _refused(self, locale: str, key: str, status: int, **params: object) -> web.Response:
        self.metrics.paint_submissions.inc(outcome="refused")
        return web.json_response(
            {"status": "refused", "message": pages.t(locale, key, **params)}, status=status
        )

    # --- gallery --------------------------------------------------------------------------

    async def gallery_slash(self, request: web.Request) -> web.Response:
        """The gallery lives under a trailing slash, so its images are relative links."""
        raise web.HTTPPermanentRedirect(request.path + "/")

    async def gallery(self, request: web.Request) -> web.Response:
        """A thread's images as a tree."""
        try:
            nodes, owner_locale = await self.studio.gallery(request.match_info["token"])
        except TokenError as exc:
            return self._forbidden_page(request, exc)
        locale = self._locale(request, owner_locale)
        return web.Response(text=pages.gallery_page(nodes, locale), content_type="text/html")

    async def gallery_image(self, request: web.Request) -> web.Response:
        """A thumbnail or a full image of the gallery's thread, from the database."""
        raw = request.match_info["turn"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
            raise web.HTTPNotFound()
        thumb = request.path.rsplit("/", 2)[-2] == "thumb"
        started = time.monotonic()
        try:
            data, fmt = await self.studio.gallery_image(
                request.match_info["token"], int(raw), thumb=thumb
            )
        except TokenError as exc:
            return self._forbidden_page(request, exc)
        except BotError:
            raise web.HTTPNotFound() from None
        log.debug("web: gallery image in %.3fs", time.monotonic() - started)
        response = web.Response(body=data)
        response.headers["Content-Type"] = MIME.get(fmt, "application/octet-stream")
        return response
