"""Every user-facing sentence, in English and Korean, looked up by key."""

from __future__ import annotations

from typing import Final

DEFAULT_LOCALE: Final = "en"
SUPPORTED_LOCALES: Final = ("en", "ko")

# One entry per key: {"en": ..., "ko": ...}. Templates use str.format fields.
CATALOG: dict[str, dict[str, str]] = {
    # --- options ---------------------------------------------------------------
    "bad.prompt_empty": {
        "en": "The prompt is empty. Describe the image you want.",
        "ko": "프롬프트가 비어 있습니다. 원하는 이미지를 설명해 주세요.",
    },
    "bad.prompt_invisible": {
        "en": "The prompt has no visible characters, only spaces or invisible ones (such as zero-width spaces). Describe the image you want.",
        "ko": "프롬프트에 보이는 글자가 없고 공백이나 보이지 않는 문자(폭 없는 공백 등)만 있습니다. 원하는 이미지를 설명해 주세요.",
    },
    "bad.prompt_too_long": {
        "en": "The prompt is {length:,} characters long; the limit is {limit:,}.",
        "ko": "프롬프트가 {length:,}자입니다. 최대 {limit:,}자까지 가능합니다.",
    },
    "bad.retired_model": {
        "en": "The model `{model}` is retired and no longer accepts requests. Try `{suggestion}`.",
        "ko": "`{model}` 모델은 지원이 종료되었습니다. `{suggestion}` 모델을 사용해 보세요.",
    },
    "bad.unknown_model": {
        "en": "Unknown image model `{model}`. Available: {choices}.",
        "ko": "알 수 없는 이미지 모델 `{model}`입니다. 사용 가능: {choices}.",
    },
    "bad.model_not_allowed": {
        "en": "The model `{model}` is not allowed on this server. Allowed: {choices}.",
        "ko": "이 서버에서는 `{model}` 모델을 쓸 수 없습니다. 허용된 모델: {choices}.",
    },
    "bad.unknown_size": {
        "en": "`{size}` is not a size `{model}` can make. Use {choices}.",
        "ko": "`{model}` 모델은 `{size}` 크기를 만들 수 없습니다. 가능한 크기: {choices}.",
    },
    "bad.size_rules": {
        "en": "`{size}` does not fit the size rules of `{model}`: {rule}.",
        "ko": "`{size}` 크기는 `{model}` 모델의 규칙에 맞지 않습니다: {rule}.",
    },
    "bad.unknown_quality": {
        "en": "`{quality}` is not a quality `{model}` offers. Use {choices}.",
        "ko": "`{model}` 모델은 `{quality}` 품질을 지원하지 않습니다. 가능한 값: {choices}.",
    },
    "bad.unknown_format": {
        "en": "`{format}` is not an output format. Use png, jpeg or webp.",
        "ko": "`{format}`은(는) 지원하지 않는 출력 형식입니다. png, jpeg, webp 중에서 고르세요.",
    },
    "bad.unknown_background": {
        "en": "`{background}` is not a background. Use auto, opaque or transparent.",
        "ko": "`{background}`은(는) 알 수 없는 배경 값입니다. auto, opaque, transparent 중에서 고르세요.",
    },
    "bad.unknown_moderation": {
        "en": "`{moderation}` is not a moderation level. Use auto or low.",
        "ko": "`{moderation}`은(는) 알 수 없는 검열 수준입니다. auto 또는 low를 고르세요.",
    },
    "bad.transparent_jpeg": {
        "en": "A transparent background needs png or webp; jpeg has no transparency.",
        "ko": "투명 배경은 png 또는 webp 형식에서만 가능합니다. jpeg는 투명도를 지원하지 않습니다.",
    },
    "bad.transparent_model": {
        "en": "`{model}` cannot make transparent backgrounds. Pick another model or an opaque background.",
        "ko": "`{model}` 모델은 투명 배경을 만들 수 없습니다. 다른 모델이나 불투명 배경을 고르세요.",
    },
    "bad.compression_png": {
        "en": "Compression applies to jpeg and webp only; png is always lossless.",
        "ko": "압축률은 jpeg와 webp에만 적용됩니다. png는 항상 무손실입니다.",
    },
    "bad.compression_range": {
        "en": "Compression must be between 0 and 100 (got {value}).",
        "ko": "압축률은 0에서 100 사이여야 합니다 (입력값: {value}).",
    },
    "bad.partials_range": {
        "en": "Partial images must be between 0 and 3 (got {value}).",
        "ko": "중간 이미지 수는 0에서 3 사이여야 합니다 (입력값: {value}).",
    },
    "bad.input_fidelity": {
        "en": "`{model}` does not take input fidelity `{value}`.",
        "ko": "`{model}` 모델은 입력 충실도 `{value}`을(를) 지원하지 않습니다.",
    },
    "bad.too_many_images": {
        "en": "At most {limit} reference images can be sent at once (got {count}).",
        "ko": "참조 이미지는 한 번에 최대 {limit}장까지 보낼 수 있습니다 (받은 수: {count}).",
    },
    "bad.mask_without_image": {
        "en": "A mask needs an image to apply to. Attach the image as well.",
        "ko": "마스크를 적용할 이미지가 필요합니다. 이미지도 함께 첨부해 주세요.",
    },
    # --- failures ------------------------------------------------------------------
    "fail.moderation_input": {
        "en": "The safety system refused this request before drawing (flagged: {categories}). Rephrase the prompt or change the reference image.",
        "ko": "안전 시스템이 그리기 전에 요청을 거부했습니다 (분류: {categories}). 프롬프트를 바꾸거나 참조 이미지를 변경해 보세요.",
    },
    "fail.moderation_output": {
        "en": "The safety system blocked the finished image (flagged: {categories}). Try a different wording.",
        "ko": "안전 시스템이 완성된 이미지를 차단했습니다 (분류: {categories}). 다른 표현으로 시도해 보세요.",
    },
    "fail.moderation_unknown": {
        "en": "The safety system refused this request (flagged: {categories}).",
        "ko": "안전 시스템이 요청을 거부했습니다 (분류: {categories}).",
    },
    "fail.no_image": {
        "en": "The model answered without an image: {text}",
        "ko": "모델이 이미지 없이 답했습니다: {text}",
    },
    "fail.context_expired": {
        "en": "OpenAI no longer has this conversation.",
        "ko": "OpenAI에 이 대화가 더 이상 남아 있지 않습니다.",
    },
    "fail.rate_limited": {
        "en": "OpenAI is rate limiting this bot right now. Try again in a minute.",
        "ko": "지금은 OpenAI 요청 한도에 걸렸습니다. 1분 뒤에 다시 시도해 주세요.",
    },
    "fail.quota": {
        "en": "The bot's OpenAI account is out of credit. A server admin needs to add billing.",
        "ko": "봇의 OpenAI 계정 크레딧이 소진되었습니다. 서버 관리자가 결제를 확인해야 합니다.",
    },
    "fail.auth": {
        "en": "OpenAI refused the bot's API key. A server admin needs to check it.",
        "ko": "OpenAI가 봇의 API 키를 거부했습니다. 서버 관리자가 키를 확인해야 합니다.",
    },
    "fail.bad_request": {
        "en": "OpenAI refused the request: {reason}",
        "ko": "OpenAI가 요청을 거부했습니다: {reason}",
    },
    "fail.transient": {
        "en": "OpenAI had a problem making this image. Nothing was lost: press Retry.",
        "ko": "OpenAI에서 이미지를 만드는 중 문제가 생겼습니다. 다시 시도 버튼을 눌러 주세요.",
    },
    "fail.timeout": {
        "en": "OpenAI took too long to answer. Press Retry to try again.",
        "ko": "OpenAI 응답이 너무 오래 걸렸습니다. 다시 시도 버튼을 눌러 주세요.",
    },
    "fail.connection": {
        "en": "The connection to OpenAI failed. Press Retry to try again.",
        "ko": "OpenAI 연결에 실패했습니다. 다시 시도 버튼을 눌러 주세요.",
    },
    "fail.stream_cut": {
        "en": "The image stream broke off before the final image. Press Retry to try again.",
        "ko": "최종 이미지가 오기 전에 스트림이 끊겼습니다. 다시 시도 버튼을 눌러 주세요.",
    },
    "fail.interrupted": {
        "en": "The bot restarted while this image was being made. Press Retry to make it again.",
        "ko": "이미지를 만드는 동안 봇이 재시작되었습니다. 다시 시도 버튼을 눌러 주세요.",
    },
    "fail.budget_user_usd": {
        "en": "You have reached today's limit of ${limit:.2f} (${used:.2f} spent or held by images in progress, this image ≈ ${estimate:.2f}). It resets at midnight UTC.",
        "ko": "오늘 한도 ${limit:.2f}에 도달했습니다 (사용했거나 진행 중인 이미지에 잡힌 금액 ${used:.2f}, 이번 이미지 약 ${estimate:.2f}). UTC 자정에 초기화됩니다.",
    },
    "fail.budget_user_images": {
        "en": "You have made or started {used} of today's {limit} images. It resets at midnight UTC.",
        "ko": "오늘 만들 수 있는 이미지 {limit}장 중 {used}장을 만들었거나 만드는 중입니다. UTC 자정에 초기화됩니다.",
    },
    "fail.budget_user_images_tier": {
        "en": "You have made or started {used} of today's {limit} images (the quota of your role {role}). It resets at midnight UTC.",
        "ko": "오늘 만들 수 있는 이미지 {limit}장(역할 {role}의 한도) 중 {used}장을 만들었거나 만드는 중입니다. UTC 자정에 초기화됩니다.",
    },
    "fail.budget_user_images_asked": {
        "en": "This request asks for {asked} images, and you have made or started {used} of today's {limit}. Ask for fewer (`count`), or wait until midnight UTC.",
        "ko": "이 요청은 이미지 {asked}장을 만드는데, 오늘 만들 수 있는 {limit}장 중 {used}장을 이미 만들었거나 만드는 중입니다. `개수`를 줄이거나 UTC 자정 이후에 다시 요청해 주세요.",
    },
    "fail.budget_user_images_tier_asked": {
        "en": "This request asks for {asked} images, and you have made or started {used} of today's {limit} (the quota of your role {role}). Ask for fewer (`count`), or wait until midnight UTC.",
        "ko": "이 요청은 이미지 {asked}장을 만드는데, 오늘 만들 수 있는 {limit}장(역할 {role}의 한도) 중 {used}장을 이미 만들었거나 만드는 중입니다. `개수`를 줄이거나 UTC 자정 이후에 다시 요청해 주세요.",
    },
    "fail.budget_guild_images_asked": {
        "en": "This request asks for {asked} images, and this server has made or started {used} of its {limit} images this month. Ask for fewer (`count`).",
        "ko": "이 요청은 이미지 {asked}장을 만드는데, 이 서버는 이번 달 이미지 {limit}장 중 {used}장을 이미 만들었거나 만드는 중입니다. `개수`를 줄여 주세요.",
    },
    "bad.count_range": {
        "en": "`count` must be between 1 and {most} (got {value}).",
        "ko": "`개수`는 1에서 {most} 사이여야 합니다 (입력값: {value}).",
    },
    "bad.moderation_low_nsfw": {
        "en": "On this server, `moderation: low` is allowed only in age-restricted channels.",
        "ko": "이 서버에서는 `moderation: low`를 연령 제한 채널에서만 쓸 수 있습니다.",
    },
    "fail.budget_guild_usd": {
        "en": "This server has reached its monthly budget of ${limit:.2f} (${used:.2f} spent or held by images in progress).",
        "ko": "이 서버의 월 예산 ${limit:.2f}에 도달했습니다 (사용했거나 진행 중인 이미지에 잡힌 금액 ${used:.2f}).",
    },
    "fail.budget_guild_images": {
        "en": "This server has made or started {used} of its {limit} images this month.",
        "ko": "이 서버는 이번 달 이미지 {limit}장 중 {used}장을 만들었거나 만드는 중입니다.",
    },
    "fail.too_many_jobs": {
        "en": "You already have {count} image(s) in progress; wait for them to finish.",
        "ko": "이미 진행 중인 이미지가 {count}개 있습니다. 끝날 때까지 기다려 주세요.",
    },
    "note.reseeded": {
        "en": "OpenAI had forgotten this conversation, so I continued from the thread's last image.",
        "ko": "OpenAI가 이 대화를 잊어버려서 스레드의 마지막 이미지에서 이어서 만들었습니다.",
    },
    "note.branched": {
        "en": "The thread moved on while this image was drawn, so it is a branch: reply to it to continue from it.",
        "ko": "이 이미지를 그리는 동안 스레드가 더 진행되어 이 이미지는 갈래로 저장되었습니다. 이 이미지에 답장하면 여기서 이어집니다.",
    },
    "note.incomplete": {
        "en": "OpenAI ended this response early, after the image was made; any text reply may be cut short.",
        "ko": "OpenAI가 이미지를 만든 뒤 응답을 일찍 끝냈습니다. 텍스트 답변은 잘렸을 수 있습니다.",
    },
    # --- command line ---------------------------------------------------------------
    "cli.unreadable_file": {
        "en": "Cannot read {path}: {reason}.",
        "ko": "{path} 파일을 읽을 수 없습니다: {reason}.",
    },
    "cli.unknown_previous_image": {
        "en": "The image engine continues from the parent's image, and no image of response {response_id} is stored here. Use --engine responses, or pass the image with --image.",
        "ko": "이미지 엔진은 이전 이미지에서 이어서 만드는데, 응답 {response_id}의 이미지가 여기에 저장되어 있지 않습니다. --engine responses를 쓰거나 --image로 이미지를 넘겨 주세요.",
    },
    # --- studio ---------------------------------------------------------------------
    "studio.channel_not_allowed": {
        "en": "Images can be made only in {channels} on this server.",
        "ko": "이 서버에서는 {channels} 채널에서만 이미지를 만들 수 있습니다.",
    },
    "studio.parent_image_missing": {
        "en": "I could not load the image to continue from (it may have been deleted). Start again with /imagine.",
        "ko": "이어서 만들 이미지를 불러올 수 없습니다 (삭제되었을 수 있습니다). /imagine으로 새로 시작해 주세요.",
    },
    "studio.unknown_image": {
        "en": "I can't find this image any more (it may have been deleted).",
        "ko": "이 이미지를 더 이상 찾을 수 없습니다 (삭제되었을 수 있습니다).",
    },
    "studio.unknown_job": {
        "en": "I can't find this request any more. Start again with /imagine.",
        "ko": "이 요청을 더 이상 찾을 수 없습니다. /그리기로 새로 시작해 주세요.",
    },
    "studio.not_allowed_continue": {
        "en": "On this server, only the person who started this conversation (or members the server allows) can continue it.",
        "ko": "이 서버에서는 대화를 시작한 사람(또는 서버가 허용한 멤버)만 이 대화를 이어갈 수 있습니다.",
    },
    "studio.not_allowed_delete": {
        "en": "Only the person who made this image or a moderator can delete it.",
        "ko": "이 이미지를 만든 사람이나 관리자만 삭제할 수 있습니다.",
    },
    "studio.not_allowed_retry": {
        "en": "Only the person who made this request or a moderator can retry it.",
        "ko": "이 요청을 보낸 사람이나 관리자만 다시 시도할 수 있습니다.",
    },
    "config.role_needed": {
        "en": "The “Members with the chosen role” policy needs a role: set the `continue_role` option as well.",
        "ko": "'지정한 역할이 있는 멤버' 정책을 쓰려면 `이어가기_역할` 옵션도 함께 지정해 주세요.",
    },
    "studio.not_allowed_cancel": {
        "en": "Only the person who made this request or a moderator can cancel it.",
        "ko": "이 요청을 보낸 사람이나 관리자만 취소할 수 있습니다.",
    },
    "config.tier_needs_both": {
        "en": "A quota tier needs both `tier_role` and `tier_daily_images` (0 images removes it).",
        "ko": "등급 한도에는 `등급_역할`과 `등급_하루_이미지`가 모두 필요합니다 (0장이면 삭제).",
    },
    "studio.unknown_extension": {
        "en": "I don't know that way of extending the image.",
        "ko": "이미지를 넓히는 그 방식은 알 수 없습니다.",
    },
    "studio.cancel_elsewhere": {
        "en": "Another of the bot's processes is handling this request, so it can't be cancelled from here. It will finish as usual.",
        "ko": "이 요청은 봇의 다른 프로세스가 처리하고 있어서 여기서는 취소할 수 없습니다. 평소처럼 끝까지 진행됩니다.",
    },
    "studio.not_saved": {
        "en": "I could not save your request (the bot's storage refused it), so nothing was started or charged. Please try again in a moment.",
        "ko": "요청을 저장하지 못해서 아무것도 시작하거나 청구하지 않았습니다. 잠시 후 다시 시도해 주세요.",
    },
    "studio.not_allowed_config": {
        "en": "Only members who can manage this server can change its configuration.",
        "ko": "서버 관리 권한이 있는 멤버만 서버 설정을 바꿀 수 있습니다.",
    },
    "prompt.vary": {
        "en": "Make a variation of this image: keep its subject and overall composition, but change the details, colours, lighting and style in a fresh way.",
        "ko": "이 이미지의 변형을 만들어 주세요. 주제와 전체 구도는 유지하되, 세부 요소와 색감, 조명, 스타일은 새롭게 바꿔 주세요.",
    },
    "prompt.extend": {
        "en": "The picture now sits on a larger canvas. Fill the transparent border so the scene continues naturally beyond its old edges, matching its style, light and perspective. The picture was made from: {prompt}",
        "ko": "그림이 더 넓은 캔버스 위에 놓였습니다. 투명한 가장자리를 채워 원래 가장자리 밖으로 장면이 자연스럽게 이어지도록 해 주세요. 스타일, 조명, 원근을 맞춰 주세요. 원래 그림의 프롬프트: {prompt}",
    },
    # --- images ---------------------------------------------------------------------
    "images.empty": {
        "en": "The file is empty. Attach an image (PNG, JPEG or WebP).",
        "ko": "파일이 비어 있습니다. 이미지(PNG, JPEG, WebP)를 첨부해 주세요.",
    },
    "images.too_large_bytes": {
        "en": "The image is {size} MB; the limit is {limit} MB. Send a smaller file.",
        "ko": "이미지 용량이 {size}MB입니다. 최대 {limit}MB까지 보낼 수 있으니 더 작은 파일을 보내 주세요.",
    },
    "images.too_many_pixels": {
        "en": "The image is {width}×{height} pixels, more than the {limit:,} pixels allowed. Send a smaller image.",
        "ko": "이미지가 {width}×{height} 픽셀로, 허용된 {limit:,} 픽셀을 넘습니다. 더 작은 이미지를 보내 주세요.",
    },
    "images.not_an_image": {
        "en": "This file is not an image. Send a PNG, JPEG or WebP picture.",
        "ko": "이미지 파일이 아닙니다. PNG, JPEG, WebP 이미지를 보내 주세요.",
    },
    "images.truncated": {
        "en": "The image file is incomplete or damaged (it may have been cut off while uploading). Send it again.",
        "ko": "이미지 파일이 불완전하거나 손상되었습니다(업로드 중에 잘렸을 수 있습니다). 다시 보내 주세요.",
    },
    "images.unsupported_format": {
        "en": "{format} images are not supported. Send a PNG, JPEG or WebP picture.",
        "ko": "{format} 형식의 이미지는 지원하지 않습니다. PNG, JPEG, WebP 이미지를 보내 주세요.",
    },
    "images.animated": {
        "en": "Animated images (GIF, WebP, APNG) and multi-page files cannot be used. Send a single still image.",
        "ko": "움직이는 이미지(GIF, WebP, APNG)나 여러 페이지로 된 파일은 사용할 수 없습니다. 정지 이미지 한 장을 보내 주세요.",
    },
    "images.too_small": {
        "en": "The image is only {width}×{height} pixels; each side must be at least {min} pixels.",
        "ko": "이미지가 {width}×{height} 픽셀로 너무 작습니다. 가로와 세로 모두 {min}픽셀 이상이어야 합니다.",
    },
    "images.converted_format": {
        "en": "Your image was converted to a format the image model accepts (PNG, JPEG or WebP).",
        "ko": "이미지 모델이 받을 수 있는 형식(PNG, JPEG, WebP)으로 이미지를 변환했습니다.",
    },
    "images.converted_cmyk": {
        "en": "Your image used print colours (CMYK); it was converted to screen colours (RGB).",
        "ko": "인쇄용 색상(CMYK) 이미지를 화면용 색상(RGB)으로 변환했습니다.",
    },
    "images.converted_16bit": {
        "en": "Your image had 16 bits per channel; it was converted to the 8 bits the image model accepts.",
        "ko": "채널당 16비트 이미지를 이미지 모델이 받을 수 있는 8비트로 변환했습니다.",
    },
    "images.converted_mode": {
        "en": "Your image's colour mode (palette, grayscale or similar) was converted to full colour.",
        "ko": "이미지의 색상 모드(팔레트, 흑백 등)를 풀 컬러로 변환했습니다.",
    },
    "images.converted_rotation": {
        "en": "Your image was turned upright according to its camera orientation data.",
        "ko": "카메라 방향 정보에 맞춰 이미지를 바로 세웠습니다.",
    },
    "mask.wrong_size": {
        "en": "The mask is {mask_width}×{mask_height} pixels but the image is {width}×{height}. The mask must be exactly the same size as the image.",
        "ko": "마스크는 {mask_width}×{mask_height} 픽셀인데 이미지는 {width}×{height} 픽셀입니다. 마스크는 이미지와 크기가 정확히 같아야 합니다.",
    },
    "mask.nothing_to_edit": {
        "en": "Nothing is marked for editing. In a mask, paint the area to change white on black (or paint it on a transparent layer); in the grid, pick at least one cell.",
        "ko": "편집할 영역이 지정되지 않았습니다. 마스크에서는 검은 바탕에 바꿀 부분을 흰색으로 칠하고(또는 투명한 레이어에 칠하고), 격자에서는 칸을 하나 이상 골라 주세요.",
    },
    "mask.too_complex": {
        "en": "The mask is too detailed to fit the {limit} MB limit for masks. Use a mask with simpler, solid areas.",
        "ko": "마스크가 너무 복잡해서 마스크 용량 제한({limit}MB)을 넘습니다. 단순하고 꽉 찬 영역으로 된 마스크를 사용해 주세요.",
    },
    # --- web studio ---------------------------------------------------------------
    "web.not_configured": {
        "en": "The web studio is not set up on this bot (its operator has not set PUBLIC_BASE_URL).",
        "ko": "이 봇에는 웹 스튜디오가 설정되어 있지 않습니다(운영자가 PUBLIC_BASE_URL을 설정하지 않았습니다).",
    },
}


def register(messages: dict[str, dict[str, str]]) -> None:
    """Add another layer's sentences (the Discord side's) to the catalog; keys must be new."""
    for key, entry in messages.items():
        if CATALOG.get(key, entry) is not entry:
            raise KeyError(f"duplicate message key {key!r}")
        CATALOG[key] = entry


def normalize_locale(locale: str | None) -> str:
    """Map a Discord locale (`ko`, `en-US`, `en-GB`, ...) to one of ours."""
    if not locale:
        return DEFAULT_LOCALE
    base = str(locale).split("-")[0].lower()
    return base if base in SUPPORTED_LOCALES else DEFAULT_LOCALE


def t(locale: str | None, key: str, /, **params: object) -> str:
    """The sentence for `key` in `locale` (English when missing), with `params` filled in."""
    entry = CATALOG.get(key)
    if entry is None:
        raise KeyError(f"no message for key {key!r}")
    template = entry.get(normalize_locale(locale)) or entry[DEFAULT_LOCALE]
    return template.format(**params)


def has_key(key: str) -> bool:
    """Whether `key` has a message."""
    return key in CATALOG
