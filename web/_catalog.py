"""Sentences of the web pages, in English and Korean (registered with the core's catalog)."""

from __future__ import annotations

from bot.core import i18n

WEB_MESSAGES: dict[str, dict[str, str]] = {
    "page.paint_title": {"en": "Paint the area to change", "ko": "바꿀 부분 칠하기"},
    "page.paint_help": {
        "en": "Paint over the part of the image to change; what you leave unpainted is kept. Then say what to do there.",
        "ko": "이미지에서 바꿀 부분을 칠하세요. 칠하지 않은 부분은 그대로 둡니다. 그런 다음 그곳에 할 일을 적어 주세요.",
    },
    "page.brush": {"en": "Brush", "ko": "붓"},
    "page.eraser": {"en": "Eraser", "ko": "지우개"},
    "page.size": {"en": "Brush size", "ko": "붓 크기"},
    "page.zoom": {"en": "Zoom", "ko": "확대"},
    "page.undo": {"en": "Undo", "ko": "되돌리기"},
    "page.clear": {"en": "Clear", "ko": "모두 지우기"},
    "page.prompt": {"en": "What to do in the painted area", "ko": "칠한 부분에 할 일"},
    "page.prompt_placeholder": {
        "en": "e.g. a red kite in the sky",
        "ko": "예: 하늘에 빨간 연",
    },
    "page.submit": {"en": "Send", "ko": "보내기"},
    "page.sending": {"en": "Sending…", "ko": "보내는 중…"},
    "page.queued": {
        "en": "Queued. The edited image will appear in the thread as usual; you can close this page.",
        "ko": "대기열에 넣었습니다. 편집된 이미지는 평소처럼 스레드에 올라옵니다. 이 페이지는 닫아도 됩니다.",
    },
    "page.nothing_painted": {
        "en": "Paint the area to change first.",
        "ko": "먼저 바꿀 부분을 칠해 주세요.",
    },
    "page.failed": {
        "en": "Sending failed. Check your connection and try again.",
        "ko": "보내지 못했습니다. 연결을 확인하고 다시 시도해 주세요.",
    },
    "page.expires": {
        "en": "This link expires at {time} UTC.",
        "ko": "이 링크는 UTC {time}에 만료됩니다.",
    },
    "page.forbidden_title": {"en": "This link does not work", "ko": "이 링크는 쓸 수 없습니다"},
    "page.forbidden": {
        "en": "The link is not valid: it has expired, was already used, or was not made by the bot. Press the button under the image again for a new one.",
        "ko": "유효하지 않은 링크입니다. 만료되었거나 이미 사용되었거나 봇이 만든 링크가 아닙니다. 이미지 아래 버튼을 다시 눌러 새 링크를 받으세요.",
    },
    "page.too_large": {
        "en": "The upload is larger than {limit} MB.",
        "ko": "올린 파일이 {limit}MB보다 큽니다.",
    },
    "page.bad_upload": {
        "en": "The page sent an incomplete form. Reload it and try again.",
        "ko": "페이지가 불완전한 양식을 보냈습니다. 새로 고친 뒤 다시 시도해 주세요.",
    },
    "page.not_found": {"en": "Nothing is here.", "ko": "여기에는 아무것도 없습니다."},
    "page.gallery_title": {"en": "Images of this thread", "ko": "이 스레드의 이미지"},
    "page.gallery_help": {
        "en": "Each image sits under the one it continued; a reply to an earlier image starts a branch.",
        "ko": "각 이미지는 이어 받은 이미지 아래에 놓입니다. 이전 이미지에 답장하면 새 갈래가 생깁니다.",
    },
    "page.gallery_empty": {
        "en": "No images in this thread yet.",
        "ko": "이 스레드에는 아직 이미지가 없습니다.",
    },
    "page.branched_from": {"en": "from #{parent}", "ko": "#{parent}에서 이어짐"},
    "page.revised": {"en": "Revised prompt", "ko": "고쳐 쓴 프롬프트"},
    "page.details": {
        "en": "{model} · {engine} · ≈${cost:.3f} · {seconds}",
        "ko": "{model} · {engine} · 약 ${cost:.3f} · {seconds}",
    },
    "page.seconds": {"en": "{seconds:.1f} s", "ko": "{seconds:.1f}초"},
    "page.no_seconds": {"en": "time unknown", "ko": "시간 모름"},
    "page.language": {"en": "한국어", "ko": "English"},
}

i18n.register(WEB_MESSAGES)
