"""The HTML of the web studio: templates filled with escaped text."""

from __future__ import annotations

import html
import string
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import web._catalog  # noqa: F401  (registers the pages' sentences)
from bot.core import i18n
from bot.core.webstudio import PaintPage, TurnNode

TEMPLATES = Path(__file__).resolve().parent / "templates"


def t(locale: str, key: str, /, **params: object) -> str:
    """The catalog sentence `key` in `locale`."""
    return i18n.t(locale, key, **params)


def escape(value: object) -> str:
    """Text made inert in HTML, in element content and in quoted attributes."""
    return html.escape(str(value), quote=True)


@cache
def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text(encoding="utf-8"))


def render(name: str, safe_html: dict[str, str] | None = None, /, **text: object) -> str:
    """Fill template `name`: every value is escaped except the prebuilt HTML in `safe_html`."""
    values = {key: escape(value) for key, value in text.items()}
    values.update(safe_html or {})
    return _template(name).substitute(values)


def _language(locale: str) -> dict[str, str]:
    other = "ko" if locale == "en" else "en"
    return {"lang": locale, "other_lang": other, "other_language": t(locale, "page.language")}


def paint_page(page: PaintPage, locale: str) -> str:
    """The painter for one image."""
    expires = time.strftime("%H:%M", time.gmtime(page.expires_at))
    return render(
        "paint.html",
        None,
        **_language(locale),
        title=t(locale, "page.paint_title"),
        help=t(locale, "page.paint_help"),
        expires=t(locale, "page.expires", time=expires),
        width=page.width,
        height=page.height,
        brush=t(locale, "page.brush"),
        eraser=t(locale, "page.eraser"),
        size=t(locale, "page.size"),
        zoom=t(locale, "page.zoom"),
        undo=t(locale, "page.undo"),
        clear=t(locale, "page.clear"),
        prompt_label=t(locale, "page.prompt"),
        placeholder=t(locale, "page.prompt_placeholder"),
        prompt="",
        submit=t(locale, "page.submit"),
        sending=t(locale, "page.sending"),
        failed=t(locale, "page.failed"),
        nothing=t(locale, "page.nothing_painted"),
    )


def _node(node: TurnNode, locale: str) -> str:
    seconds = (
        t(locale, "page.seconds", seconds=node.seconds)
        if node.seconds is not None
        else t(locale, "page.no_seconds")
    )
    details = t(
        locale,
        "page.details",
        model=node.model,
        engine=node.engine,
        cost=node.cost_usd,
        seconds=seconds,
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(node.created_at))
    parts = [
        f'<figure class="turn" id="turn-{node.turn_id}">',
        f'<a href="image/{node.turn_id}"><img src="thumb/{node.turn_id}" alt="" loading="lazy"'
        ' width="128" height="128"></a>',
        "<figcaption>",
        f'<div class="meta">#{node.turn_id}',
    ]
    if node.parent_id is not None:
        parts.append(" · " + escape(t(locale, "page.branched_from", parent=node.parent_id)))
    parts.append(f" · {escape(when)}</div>")
    parts.append(f'<div class="prompt">{escape(node.prompt)}</div>')
    if node.revised_prompt:
        label = escape(t(locale, "page.revised"))
        parts.append(f'<div class="revised"><b>{label}:</b> {escape(node.revised_prompt)}</div>')
    parts.append(f'<div class="meta">{escape(details)}</div>')
    parts.append("</figcaption></figure>")
    return "".join(parts)


def tree_html(nodes: Sequence[TurnNode], locale: str) -> str:
    """Nested lists: each image under the one it continued."""
    if not nodes:
        return f'<p class="empty">{escape(t(locale, "page.gallery_empty"))}</p>'
    out = ['<ul class="tree">']
    depth = 0
    first = True
    for node in nodes:
        if first:
            first = False
        elif node.depth > depth:
            out.append("<ul>")
        else:
            out.append("</li>")
            for _ in range(depth - node.depth):
                out.append("</ul></li>")
        depth = node.depth
        out.append(f'<li data-turn="{node.turn_id}">{_node(node, locale)}')
    out.append("</li>")
    for _ in range(depth):
        out.append("</ul></li>")
    out.append("</ul>")
    return "".join(out)


def gallery_page(nodes: Sequence[TurnNode], locale: str) -> str:
    """The tree of a thread's images."""
    return render(
        "gallery.html",
        {"tree_html": tree_html(nodes, locale)},
        **_language(locale),
        title=t(locale, "page.gallery_title"),
        help=t(locale, "page.gallery_help"),
    )


def message_page(locale: str, title_key: str, text_key: str, **params: object) -> str:
    """A page that only says something (a refused link, nothing here)."""
    return render(
        "message.html",
        None,
        lang=locale,
        title=t(locale, title_key),
        text=t(locale, text_key, **params),
    )
