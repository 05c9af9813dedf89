"""Messages of the Discord layer: command names, descriptions, choices, replies."""

from __future__ import annotations

from bot.core import i18n

_HELP_EN = """\
**How this bot works**
🎨 `/imagine` draws your prompt in a new thread; partial images show the progress.
🔢 `count:2-4` draws several at once in one grid; **U1-U4** picks the one to continue from.
💬 In the thread, every message continues: write "make it night time" and the latest image \
is edited. Reply to an earlier image to branch from it instead.
📎 Attached images are references; one named `mask…` is the mask (same size as the image): \
white = change, black = keep; strokes on a transparent layer, or transparent holes in an \
opaque mask (OpenAI's format), = change.
🔘 Buttons under every image:
• **Reroll**: the same prompt once more
• **Vary**: a variation of this image
• **Edit**: type what to change in this image
• **Edit region**: pick cells on a grid, then say what to change there
• **Delete**: remove the image (its author or a moderator)
• **Zoom out or pan**: a larger canvas (1.5x, 2x, or one side), the new edge drawn
• **Retry** (under an error): run the request again
• **Cancel** (under a request still waiting or drawing): stop it; nothing is charged for it
📐 `size`: `square`, `portrait`, `landscape`, `wide`, `tall` or `WIDTHxHEIGHT`. A prompt the \
model rewrote is shown under the image.
✏️ `/edit` changes an image you upload (optionally with a mask) in a new thread; \
**Apps → Edit with imagine** does the same for an image anyone posted.
⚙️ `/settings` sets your own defaults: size, quality, format, model, language, spoilers and more.
📊 `/usage`: your images, tokens and cost today and this month (admins: the server's).
🛠️ `/config` (Manage Server only): budgets, daily image quotas by role, allowed channels, \
default and allowed models, moderation (and `low` only in age-restricted channels), who may \
continue threads, partial images on or off, every result as a spoiler.
🔒 `/privacy`: what the bot keeps about you, deleted on request."""

_HELP_KO = """\
**사용 방법**
🎨 `/그리기`는 프롬프트로 이미지를 그리고, 그 이미지를 위한 스레드를 엽니다. 그리는 동안 \
부분 이미지로 진행 상황을 보여 주고, 완성되면 최종 이미지로 바뀝니다.
🔢 `개수:2-4`는 여러 장을 한 번에 그려 한 메시지에 모아 올립니다. **U1-U4**로 이어서 작업할 \
이미지를 고릅니다.
💬 스레드에 쓰는 메시지는 모두 대화의 다음 차례가 됩니다. "밤 풍경으로 바꿔 주세요"처럼 쓰면 \
가장 최근 이미지를 편집합니다. 이전 이미지에 답장(Discord 답장)하면 그 이미지에서 갈라져 \
나갑니다.
📎 메시지에 첨부한 이미지는 참조 이미지로 쓰입니다. 이름이 `mask`로 시작하는 첨부 파일 \
하나(예: `mask.png`)는 마스크이며, 이미지와 크기가 같아야 합니다. 흰색은 바꿀 영역, 검은색은 \
그대로 둘 영역입니다. 투명도가 있는 마스크는 가장자리를 보고 판단합니다. 투명한 레이어에 \
칠한 부분은 바뀌고, 불투명한 마스크에 뚫린 투명한 구멍(OpenAI 형식)도 바뀝니다.
🔘 이미지 아래 버튼:
• **다시 뽑기**: 같은 프롬프트로 한 번 더
• **변형**: 이 이미지의 변형 만들기
• **편집**: 이 이미지에서 바꿀 내용 입력
• **영역 편집**: 격자에서 칸을 고른 뒤 그 부분에서 바꿀 내용 입력
• **삭제**: 이미지 지우기 (만든 사람 또는 관리자)
• **축소·넓히기**: 캔버스를 넓혀(1.5배, 2배, 한쪽) 새 가장자리를 그려 넣기
• **다시 시도** (오류 아래): 요청을 다시 실행
• **취소** (대기 중이거나 그리는 중인 요청 아래): 요청을 멈춥니다. 비용은 청구되지 않습니다
📐 `크기`: `square`, `portrait`, `landscape`, `wide`, `tall` 또는 `가로x세로`. 모델이 바꿔 쓴 \
프롬프트는 이미지 아래에 표시됩니다.
✏️ `/편집`은 업로드한 이미지를 (마스크와 함께) 편집하고, 이어서 작업할 스레드를 엽니다. \
**앱 → 그리기로 편집**으로 누가 올린 이미지든 같은 방식으로 편집할 수 있습니다.
⚙️ `/설정`에서 크기, 품질, 형식, 모델, 언어, 스포일러 등 나만의 기본값을 정합니다.
📊 `/사용량`은 오늘과 이번 달에 만든 이미지 수, 토큰, 예상 비용을 보여 줍니다(관리자는 \
서버 전체 사용량도 차트와 함께 볼 수 있습니다).
🛠️ `/서버설정`(서버 관리 권한 필요): 예산, 역할별 하루 이미지 한도, 허용 채널, 기본·허용 \
모델, 검열 수준(`low`는 연령 제한 채널에서만 허용 가능), 스레드를 이어갈 수 있는 사람, 부분 \
이미지 표시 여부, 모든 결과의 스포일러 처리를 정합니다.
🔒 `/개인정보`는 봇이 나에 대해 보관하는 정보를 알려 주고, 요청하면 모두 삭제합니다."""

_PRIVACY_EN = """\
🔒 **What the bot keeps about you**
• your `/settings` defaults;
• your prompts and, for each image, the ids of its Discord message and OpenAI response \
(needed to continue conversations and to make the buttons work);
• the images made for you (so a restart can still post them and a thread can go on from them);
• your usage: images, tokens and estimated cost (for `/usage` and the budgets).
Prompts and images are sent to OpenAI to be drawn, with only a one-way hash of your Discord \
id. Images stay in Discord as messages: remove them with the **Delete** button.
To delete everything the bot keeps about you, run `/privacy` again with `confirm` set to True."""

_PRIVACY_KO = """\
🔒 **봇이 보관하는 내 정보**
• `/설정`에서 정한 기본값
• 내 프롬프트와, 이미지마다 Discord 메시지 및 OpenAI 응답의 ID(대화를 이어가고 버튼이 \
동작하는 데 필요합니다)
• 나를 위해 만든 이미지(재시작 뒤에도 올리고, 스레드를 이어가는 데 쓰입니다)
• 사용 기록: 이미지 수, 토큰, 예상 비용(`/사용량`과 예산 계산에 쓰입니다)
프롬프트와 이미지는 그림을 그리기 위해 OpenAI로 전송되며, Discord ID 대신 되돌릴 수 없는 \
해시값만 함께 전달됩니다. 이미지는 Discord 메시지로 남아 있으니 **삭제** 버튼으로 지울 수 \
있습니다.
봇이 보관하는 내 정보를 모두 삭제하려면 `확인` 옵션을 True로 설정해서 `/개인정보`를 다시 \
실행해 주세요."""

# One entry per key: {"en": ..., "ko": ...}. Templates use str.format fields.
DISCORD_MESSAGES: dict[str, dict[str, str]] = {
    # --- commands -------------------------------------------------------------------
    "cmd.imagine.name": {"en": "imagine", "ko": "그리기"},
    "cmd.imagine.desc": {
        "en": "Draw an image from a prompt in a new thread; every message there edits it",
        "ko": "프롬프트로 이미지를 그리고 스레드를 엽니다. 스레드의 메시지마다 이미지를 편집합니다",
    },
    "cmd.edit.name": {"en": "edit", "ko": "편집"},
    "cmd.edit.desc": {
        "en": "Edit an image you upload; the thread it opens continues from the result",
        "ko": "업로드한 이미지를 편집합니다. 열린 스레드에서 결과를 이어서 편집할 수 있습니다",
    },
    "cmd.settings.name": {"en": "settings", "ko": "설정"},
    "cmd.settings.desc": {
        "en": "Show or change your default image options and language",
        "ko": "내 이미지 기본 옵션과 언어를 확인하거나 바꿉니다",
    },
    "cmd.usage.name": {"en": "usage", "ko": "사용량"},
    "cmd.usage.desc": {
        "en": "Your images, tokens and estimated cost (admins also see the server's)",
        "ko": "내가 만든 이미지 수, 토큰, 예상 비용을 봅니다 (관리자는 서버 전체도 볼 수 있습니다)",
    },
    "cmd.config.name": {"en": "config", "ko": "서버설정"},
    "cmd.config.desc": {
        "en": "Show or change this server's budgets, channels, models and permissions",
        "ko": "이 서버의 예산, 채널, 모델, 권한 설정을 확인하거나 바꿉니다",
    },
    "cmd.privacy.name": {"en": "privacy", "ko": "개인정보"},
    "cmd.privacy.desc": {
        "en": "See what the bot keeps about you, or delete it all",
        "ko": "봇이 보관하는 내 정보를 확인하거나 모두 삭제합니다",
    },
    "cmd.help.name": {"en": "help", "ko": "도움말"},
    "cmd.help.desc": {
        "en": "How this bot works",
        "ko": "이 봇의 사용 방법을 알려 줍니다",
    },
    # --- options: /imagine, /edit, /settings -----------------------------------------
    "opt.prompt.name": {"en": "prompt", "ko": "프롬프트"},
    "opt.prompt.desc": {
        "en": "What to draw",
        "ko": "그릴 내용",
    },
    "opt.instruction.name": {"en": "prompt", "ko": "지시문"},
    "opt.instruction.desc": {
        "en": "What to change in the image",
        "ko": "이미지에서 바꿀 내용",
    },
    "opt.size.name": {"en": "size", "ko": "크기"},
    "opt.size.desc": {
        "en": "Width x height, e.g. 1024x1536, or auto",
        "ko": "가로x세로 (예: 1024x1536) 또는 auto",
    },
    "opt.quality.name": {"en": "quality", "ko": "품질"},
    "opt.quality.desc": {
        "en": "Higher quality takes longer and costs more",
        "ko": "품질이 높을수록 오래 걸리고 비용이 더 듭니다",
    },
    "opt.format.name": {"en": "format", "ko": "형식"},
    "opt.format.desc": {
        "en": "File format of the image",
        "ko": "이미지 파일 형식",
    },
    "opt.background.name": {"en": "background", "ko": "배경"},
    "opt.background.desc": {
        "en": "Background of the image; transparent needs png or webp",
        "ko": "이미지 배경. 투명 배경은 png 또는 webp 형식에서만 가능합니다",
    },
    "opt.compression.name": {"en": "compression", "ko": "압축률"},
    "opt.compression.desc": {
        "en": "Compression level for jpeg and webp, 0-100 %",
        "ko": "jpeg와 webp의 압축률 (0~100%)",
    },
    "opt.moderation.name": {"en": "moderation", "ko": "검열"},
    "opt.moderation.desc": {
        "en": "How strict the safety filter is (low = less strict)",
        "ko": "안전 필터의 엄격한 정도 (low = 덜 엄격함)",
    },
    "opt.partials.name": {"en": "partials", "ko": "부분이미지"},
    "opt.partials.desc": {
        "en": "How many partial images to show while drawing (0-3)",
        "ko": "그리는 동안 보여 줄 부분 이미지 수 (0~3)",
    },
    "opt.count.name": {"en": "count", "ko": "개수"},
    "opt.count.desc": {
        "en": "How many images to draw at once (1-4), posted together; pick one to continue",
        "ko": "한 번에 그릴 이미지 수 (1~4). 함께 올라오며, 이어서 작업할 이미지를 고릅니다",
    },
    "opt.model.name": {"en": "model", "ko": "모델"},
    "opt.model.desc": {
        "en": "The image model to use",
        "ko": "사용할 이미지 모델",
    },
    "opt.image.name": {"en": "image", "ko": "이미지"},
    "opt.image.desc": {
        "en": "A reference image (PNG, JPEG or WebP)",
        "ko": "참조 이미지 (PNG, JPEG, WebP)",
    },
    "opt.image2.name": {"en": "image2", "ko": "이미지2"},
    "opt.image3.name": {"en": "image3", "ko": "이미지3"},
    "opt.edit_image.desc": {
        "en": "The image to edit (PNG, JPEG or WebP)",
        "ko": "편집할 이미지 (PNG, JPEG, WebP)",
    },
    "opt.mask.name": {"en": "mask", "ko": "마스크"},
    "opt.mask.desc": {
        "en": "Mask: white = change, black = keep; strokes on a transparent layer = change",
        "ko": "마스크: 흰색 = 바꿀 영역, 검은색 = 유지; 투명 레이어에 칠한 부분 = 바꿀 영역",
    },
    "opt.language.name": {"en": "language", "ko": "언어"},
    "opt.language.desc": {
        "en": "The language the bot answers you in",
        "ko": "봇이 나에게 답할 때 쓰는 언어",
    },
    "opt.reset.name": {"en": "reset", "ko": "초기화"},
    "opt.reset.desc": {
        "en": "Clear your saved defaults first (then apply the options given here)",
        "ko": "저장된 내 기본값을 먼저 지웁니다 (그다음 여기서 고른 옵션을 적용합니다)",
    },
    # --- options: /config ----------------------------------------------------------------
    "opt.user_daily_usd.name": {"en": "user_daily_usd", "ko": "사용자_일일_달러"},
    "opt.user_daily_usd.desc": {
        "en": "Each member's daily spending limit in USD (0 = no limit)",
        "ko": "멤버 한 명의 하루 사용 한도, 미국 달러 (0 = 제한 없음)",
    },
    "opt.user_daily_images.name": {"en": "user_daily_images", "ko": "사용자_일일_장수"},
    "opt.user_daily_images.desc": {
        "en": "How many images each member may make a day (0 = no limit)",
        "ko": "멤버 한 명이 하루에 만들 수 있는 이미지 수 (0 = 제한 없음)",
    },
    "opt.server_monthly_usd.name": {"en": "server_monthly_usd", "ko": "서버_월간_달러"},
    "opt.server_monthly_usd.desc": {
        "en": "The server's monthly budget in USD (0 = no limit)",
        "ko": "서버 전체의 월 예산, 미국 달러 (0 = 제한 없음)",
    },
    "opt.server_monthly_images.name": {"en": "server_monthly_images", "ko": "서버_월간_장수"},
    "opt.server_monthly_images.desc": {
        "en": "How many images the whole server may make a month (0 = no limit)",
        "ko": "서버 전체가 한 달에 만들 수 있는 이미지 수 (0 = 제한 없음)",
    },
    "opt.allowed_channels.name": {"en": "allowed_channels", "ko": "허용_채널"},
    "opt.allowed_channels.desc": {
        "en": "Mention the channels where images may be made (no channel = everywhere)",
        "ko": "이미지를 만들 수 있는 채널을 멘션하세요 (채널이 없으면 모든 채널 허용)",
    },
    "opt.default_model.name": {"en": "default_model", "ko": "기본_모델"},
    "opt.default_model.desc": {
        "en": "The model used when a member does not pick one",
        "ko": "멤버가 모델을 고르지 않았을 때 쓰는 모델",
    },
    "opt.allowed_models.name": {"en": "allowed_models", "ko": "허용_모델"},
    "opt.allowed_models.desc": {
        "en": "The models members may use, separated by commas",
        "ko": "멤버가 쓸 수 있는 모델 (쉼표로 구분)",
    },
    "opt.server_moderation.desc": {
        "en": "Moderation for the whole server; auto keeps everyone on the stricter filter",
        "ko": "서버 전체의 검열 수준. auto로 정하면 모두에게 더 엄격한 필터가 적용됩니다",
    },
    "opt.continue_policy.name": {"en": "continue_policy", "ko": "이어가기_권한"},
    "opt.continue_policy.desc": {
        "en": "Who may continue a conversation someone else started",
        "ko": "다른 사람이 시작한 대화를 누가 이어갈 수 있는지",
    },
    "opt.continue_role.name": {"en": "continue_role", "ko": "이어가기_역할"},
    "opt.continue_role.desc": {
        "en": "The role that may continue others' conversations (with the role policy)",
        "ko": "다른 사람의 대화를 이어갈 수 있는 역할 (역할 정책을 쓸 때)",
    },
    "opt.partials_enabled.name": {"en": "partials", "ko": "부분이미지"},
    "opt.partials_enabled.desc": {
        "en": "Show partial images while drawing",
        "ko": "그리는 동안 부분 이미지를 보여 줄지 여부",
    },
    "opt.tier_role.name": {"en": "tier_role", "ko": "등급_역할"},
    "opt.tier_role.desc": {
        "en": "A role with its own daily image quota (set it with tier_daily_images)",
        "ko": "하루 이미지 한도를 따로 줄 역할 (등급_하루_이미지와 함께 지정)",
    },
    "opt.tier_daily_images.name": {"en": "tier_daily_images", "ko": "등급_하루_이미지"},
    "opt.tier_daily_images.desc": {
        "en": "Images a day for members with tier_role (0 removes the tier)",
        "ko": "등급_역할이 있는 멤버의 하루 이미지 수 (0이면 등급 삭제)",
    },
    "opt.low_moderation_nsfw_only.name": {
        "en": "low_moderation_nsfw_only",
        "ko": "낮은검열_연령제한만",
    },
    "opt.low_moderation_nsfw_only.desc": {
        "en": "Allow moderation: low only in age-restricted channels",
        "ko": "moderation: low를 연령 제한 채널에서만 허용",
    },
    "opt.spoilers.name": {"en": "spoilers", "ko": "모두_스포일러"},
    "opt.spoilers.desc": {
        "en": "Post every result behind a spoiler",
        "ko": "모든 결과를 스포일러로 가려서 올림",
    },
    "opt.spoiler.name": {"en": "spoiler", "ko": "스포일러"},
    "opt.spoiler.desc": {
        "en": "Post your results behind a spoiler",
        "ko": "내 결과를 스포일러로 가려서 올림",
    },
    "usage.tier": {
        "en": "Your daily quota comes from your role {role}.",
        "ko": "하루 한도는 내 역할 {role}에서 정해집니다.",
    },
    "usage.top_users": {
        "en": "👥 **Top this month:** {users}",
        "ko": "👥 **이번 달 많이 쓴 멤버:** {users}",
    },
    "opt.engine.name": {"en": "engine", "ko": "엔진"},
    "opt.engine.desc": {
        "en": "The OpenAI API that new conversations use",
        "ko": "새 대화에 사용할 OpenAI API",
    },
    "opt.reset_config.desc": {
        "en": "Clear this server's configuration first (then apply the options given here)",
        "ko": "이 서버의 설정을 먼저 지웁니다 (그다음 여기서 고른 옵션을 적용합니다)",
    },
    # --- options: /privacy -------------------------------------------------------------
    "opt.confirm.name": {"en": "confirm", "ko": "확인"},
    "opt.confirm.desc": {
        "en": "True deletes everything the bot keeps about you",
        "ko": "True로 설정하면 봇이 보관하는 내 정보를 모두 삭제합니다",
    },
    # --- choices -------------------------------------------------------------------------
    "choice.quality.auto": {"en": "Auto", "ko": "자동"},
    "choice.quality.low": {"en": "Low", "ko": "낮음"},
    "choice.quality.medium": {"en": "Medium", "ko": "보통"},
    "choice.quality.high": {"en": "High", "ko": "높음"},
    "choice.quality.xhigh": {
        "en": "Extra high (GPT Image 2.5+)",
        "ko": "매우 높음 (GPT Image 2.5 이상)",
    },
    "choice.quality.max": {"en": "Maximum (GPT Image 2.5+)", "ko": "최고 (GPT Image 2.5 이상)"},
    "choice.format.png": {"en": "PNG (lossless)", "ko": "PNG (무손실)"},
    "choice.format.jpeg": {"en": "JPEG (smallest files)", "ko": "JPEG (가장 작은 용량)"},
    "choice.format.webp": {"en": "WebP (small files)", "ko": "WebP (작은 용량)"},
    "choice.background.auto": {"en": "Auto", "ko": "자동"},
    "choice.background.opaque": {"en": "Opaque", "ko": "불투명"},
    "choice.background.transparent": {"en": "Transparent (png/webp)", "ko": "투명 (png/webp)"},
    "choice.moderation.auto": {"en": "Standard (auto)", "ko": "표준 (auto)"},
    "choice.moderation.low": {"en": "Less strict (low)", "ko": "덜 엄격하게 (low)"},
    "choice.language.en": {"en": "English", "ko": "English"},
    "choice.language.ko": {"en": "한국어", "ko": "한국어"},
    "choice.continue.anyone": {"en": "Anyone", "ko": "누구나"},
    "choice.continue.author": {
        "en": "Only the author (and moderators)",
        "ko": "시작한 사람만 (관리자 포함)",
    },
    "choice.continue.role": {
        "en": "Members with the chosen role",
        "ko": "지정한 역할이 있는 멤버",
    },
    "choice.engine.responses": {
        "en": "Responses API (the conversation lives at OpenAI)",
        "ko": "Responses API (OpenAI에서 대화를 이어감)",
    },
    "choice.engine.images": {
        "en": "Image API (cheaper; the bot sends the previous image)",
        "ko": "Image API (더 저렴함, 봇이 이전 이미지를 보냄)",
    },
    # --- buttons and the edit form -----------------------------------------------------
    "button.reroll": {"en": "Reroll", "ko": "다시 뽑기"},
    "button.vary": {"en": "Vary", "ko": "변형"},
    "button.edit": {"en": "Edit", "ko": "편집"},
    "button.region": {"en": "Edit region", "ko": "영역 편집"},
    "button.delete": {"en": "Delete", "ko": "삭제"},
    "button.retry": {"en": "Retry", "ko": "다시 시도"},
    "button.cancel": {"en": "Cancel", "ko": "취소"},
    "button.pick": {"en": "U{index}", "ko": "U{index}"},
    "modal.edit_title": {"en": "Edit the image", "ko": "이미지 편집"},
    "modal.edit_label": {"en": "What should change?", "ko": "무엇을 바꿀까요?"},
    "modal.edit_placeholder": {
        "en": "e.g. make it night time and add a full moon",
        "ko": "예: 밤 풍경으로 바꾸고 보름달을 넣어 주세요",
    },
    # --- progress and results ----------------------------------------------------------
    "discord.starting": {
        "en": "🎨 {user} asked for: **{prompt}**",
        "ko": "🎨 {user} 님의 요청: **{prompt}**",
    },
    "discord.continuing": {
        "en": "↪️ Added to this conversation; the image will appear here.",
        "ko": "↪️ 이 대화에 이어서 그립니다. 이미지가 곧 여기에 올라옵니다.",
    },
    "discord.no_thread_permission": {
        "en": "ℹ️ I can't create threads here, so the image will be posted in this channel. Reply to it to keep editing.",
        "ko": "ℹ️ 이 채널에서는 스레드를 만들 수 없어서 이미지를 채널에 바로 올립니다. 이미지에 답장하면 계속 편집할 수 있습니다.",
    },
    "discord.queued": {
        "en": "⏳ Waiting in line (position {position})…",
        "ko": "⏳ 대기 중입니다 ({position}번째)…",
    },
    "discord.drawing": {
        "en": "🎨 Drawing…",
        "ko": "🎨 그리는 중입니다…",
    },
    "discord.drawing_many": {
        "en": "🎨 Drawing {count} images at once…",
        "ko": "🎨 이미지 {count}장을 한 번에 그리는 중입니다…",
    },
    "discord.already_picked": {
        "en": "U{index} is already posted on its own, and the conversation continues from it again: {link}",
        "ko": "U{index}는 이미 따로 올라와 있으며, 대화가 다시 그 이미지에서 이어집니다: {link}",
    },
    "discord.reseeding": {
        "en": "🔄 OpenAI no longer has this conversation; drawing again from the thread's last image…",
        "ko": "🔄 OpenAI에 이 대화가 남아 있지 않아 스레드의 마지막 이미지에서 이어서 그리는 중입니다…",
    },
    "discord.partial": {
        "en": "🖌️ Partial image {index}/{total}…",
        "ko": "🖌️ 부분 이미지 {index}/{total}…",
    },
    "discord.reencoded": {
        "en": "📦 The image was re-encoded as {format} ({size} MB) to fit this channel's {limit} MB upload limit.",
        "ko": "📦 이 채널의 업로드 한도({limit}MB)에 맞추기 위해 이미지를 {format} 형식({size}MB)으로 다시 인코딩했습니다.",
    },
    "discord.reencoded_refused": {
        "en": "📦 Discord refused the full-size file in this channel, so the image was re-encoded as {format} ({size} MB) to fit its upload limit.",
        "ko": "📦 이 채널에서 Discord가 원본 크기의 파일을 거부해서, 업로드 한도에 맞게 이미지를 {format} 형식({size}MB)으로 다시 인코딩했습니다.",
    },
    "discord.seconds": {
        "en": "{seconds:.1f} s",
        "ko": "{seconds:.1f}초",
    },
    "discord.cost": {
        "en": "≈${cost:.3f}",
        "ko": "≈${cost:.3f}",
    },
    "discord.grid": {
        "en": "🖼️ {count} images. Press U1-U{count} to continue from one; until you pick, replies and new messages here continue from U1.",
        "ko": "🖼️ 이미지 {count}장입니다. U1~U{count} 버튼으로 이어서 작업할 이미지를 고르세요. 고르기 전까지는 답장과 새 메시지가 U1에서 이어집니다.",
    },
    "discord.grid_failed": {
        "en": "⚠️ {failed} of the {asked} images could not be made; you are charged only for what OpenAI billed.",
        "ko": "⚠️ 이미지 {asked}장 중 {failed}장을 만들지 못했습니다. OpenAI가 청구한 만큼만 부과됩니다.",
    },
    "discord.grid_reencoded": {
        "en": "📦 Re-encoded to fit this channel's upload limit; the bot keeps the originals, and edits continue from them.",
        "ko": "📦 이 채널의 업로드 한도에 맞게 다시 인코딩했습니다. 원본은 봇이 보관하며, 편집은 원본에서 이어집니다.",
    },
    "discord.picked": {
        "en": "👉 **U{index}** picked by {user}: the conversation now continues from this image. **{prompt}**",
        "ko": "👉 {user} 님이 **U{index}**를 골랐습니다. 이제 대화가 이 이미지에서 이어집니다. **{prompt}**",
    },
    "discord.region_pick": {
        "en": "🔲 Pick the numbered cells to change, then write what to change in them.",
        "ko": "🔲 바꿀 칸의 번호를 고른 뒤, 그 부분에서 무엇을 바꿀지 적어 주세요.",
    },
    "discord.region_placeholder": {
        "en": "Cells to change",
        "ko": "바꿀 칸 선택",
    },
    # --- refusals and errors (shown after "⚠️ ") ---------------------------------------
    "discord.empty_message": {
        "en": "Write what to change, or attach an image.",
        "ko": "바꿀 내용을 적거나 이미지를 첨부해 주세요.",
    },
    "discord.sticker_only": {
        "en": "Stickers can't be used as images. Write what to change, or attach an image file.",
        "ko": "스티커는 이미지로 쓸 수 없습니다. 바꿀 내용을 적거나 이미지 파일을 첨부해 주세요.",
    },
    "discord.several_masks": {
        "en": "This message has {count} files whose names start with `mask`, and only one mask can be used. Send a single mask, and give the other images names that don't start with `mask`.",
        "ko": "이 메시지에는 이름이 `mask`로 시작하는 파일이 {count}개 있는데, 마스크는 하나만 쓸 수 있습니다. 마스크는 하나만 보내고, 다른 이미지는 이름이 `mask`로 시작하지 않게 바꿔 주세요.",
    },
    "discord.not_allowed": {
        "en": "You don't have permission to use this command.",
        "ko": "이 명령을 사용할 권한이 없습니다.",
    },
    "discord.revised_prompt": {
        "en": "-# ✏️ Drawn from the model's own wording: {prompt}",
        "ko": "-# ✏️ 모델이 바꿔 쓴 프롬프트로 그렸습니다: {prompt}",
    },
    "discord.cancelled": {
        "en": "✖️ Cancelled. You are charged only what OpenAI reports as billed, and it reported nothing for this request.",
        "ko": "✖️ 취소했습니다. OpenAI가 청구했다고 알려 준 만큼만 부과되는데, 이 요청에는 청구된 것이 없습니다.",
    },
    "discord.cancel_too_late": {
        "en": "Too late to cancel: the image is already made, and it is being posted.",
        "ko": "취소하기에는 늦었습니다. 이미지가 이미 만들어져 올리는 중입니다.",
    },
    "discord.extend_placeholder": {
        "en": "Zoom out or pan…",
        "ko": "축소하거나 옆으로 넓히기…",
    },
    "extend.zoom15": {"en": "Zoom out 1.5x", "ko": "1.5배 축소"},
    "extend.zoom2": {"en": "Zoom out 2x", "ko": "2배 축소"},
    "extend.left": {"en": "Pan left", "ko": "왼쪽으로 넓히기"},
    "extend.right": {"en": "Pan right", "ko": "오른쪽으로 넓히기"},
    "extend.up": {"en": "Pan up", "ko": "위로 넓히기"},
    "extend.down": {"en": "Pan down", "ko": "아래로 넓히기"},
    "ctx.edit.name": {"en": "Edit with imagine", "ko": "그리기로 편집"},
    "discord.no_image_to_edit": {
        "en": "This message has no image to edit. Pick a message with an image attached.",
        "ko": "이 메시지에는 편집할 이미지가 없습니다. 이미지가 첨부된 메시지를 골라 주세요.",
    },
    "discord.start_failed": {
        "en": "⚠️ This request could not be started, and nothing was charged. Please try again.",
        "ko": "⚠️ 이 요청을 시작하지 못했습니다. 비용은 청구되지 않았습니다. 다시 시도해 주세요.",
    },
    "discord.no_thread": {
        "en": "Discord did not let me open a thread here, so the image will be posted in this channel. Reply to it to continue.",
        "ko": "Discord가 여기에서 스레드를 열지 못하게 해서 이미지를 이 채널에 올립니다. 이미지에 답장하면 이어서 작업할 수 있습니다.",
    },
    "discord.delivered_elsewhere": {
        "en": "The conversation where you asked for this image is gone, so here it is:",
        "ko": "이 이미지를 요청한 대화가 없어져서 여기에 보내 드립니다:",
    },
    "discord.internal_error": {
        "en": "Something went wrong on the bot's side. It has been logged; please try again.",
        "ko": "봇에서 문제가 발생했습니다. 기록을 남겼으니 다시 시도해 주세요.",
    },
    # --- /settings, /config ------------------------------------------------------------
    "settings.current": {
        "en": "⚙️ **Your defaults**\n{values}",
        "ko": "⚙️ **내 기본값**\n{values}",
    },
    "settings.none": {
        "en": "Nothing set: the defaults apply.",
        "ko": "설정된 값이 없습니다. 기본값이 적용됩니다.",
    },
    "config.current": {
        "en": "🛠️ **This server's configuration**\n{values}",
        "ko": "🛠️ **이 서버의 설정**\n{values}",
    },
    # --- /usage --------------------------------------------------------------------------
    "usage.you_today": {
        "en": "📅 **Today:** {images} image(s) · {image_tokens:,} image tokens + {tokens:,} text tokens · ≈${cost:.2f}",
        "ko": "📅 **오늘:** 이미지 {images}장 · 이미지 토큰 {image_tokens:,}개 + 텍스트 토큰 {tokens:,}개 · ≈${cost:.2f}",
    },
    "usage.you_month": {
        "en": "🗓️ **This month:** {images} image(s) · {image_tokens:,} image tokens + {tokens:,} text tokens · ≈${cost:.2f}",
        "ko": "🗓️ **이번 달:** 이미지 {images}장 · 이미지 토큰 {image_tokens:,}개 + 텍스트 토큰 {tokens:,}개 · ≈${cost:.2f}",
    },
    "usage.anonymous": {"en": "(deleted accounts)", "ko": "(삭제된 계정)"},
    "usage.unknown_member": {"en": "(unknown member)", "ko": "(알 수 없는 멤버)"},
    "usage.limit_daily_usd": {
        "en": "Your daily limit: ${limit:.2f} (resets at midnight UTC).",
        "ko": "나의 하루 한도: ${limit:.2f} (UTC 자정에 초기화됩니다).",
    },
    "usage.limit_daily_images": {
        "en": "Your daily limit: {limit} image(s) (resets at midnight UTC).",
        "ko": "나의 하루 한도: 이미지 {limit}장 (UTC 자정에 초기화됩니다).",
    },
    "usage.server_month": {
        "en": "🏠 **Server this month:** {images} image(s) · ≈${cost:.2f}",
        "ko": "🏠 **이번 달 서버 전체:** 이미지 {images}장 · ≈${cost:.2f}",
    },
    "usage.limit_monthly_images": {
        "en": "Server monthly image limit: {limit}.",
        "ko": "서버 월 이미지 한도: {limit}장.",
    },
    "usage.limit_monthly_usd": {
        "en": "Server monthly budget: ${limit:.2f}.",
        "ko": "서버 월 예산: ${limit:.2f}.",
    },
    "usage.chart_you": {
        "en": "Your estimated spending, last {days} days",
        "ko": "내 예상 사용 금액 (최근 {days}일)",
    },
    "usage.chart_server": {
        "en": "Server's estimated spending, last {days} days",
        "ko": "서버 예상 사용 금액 (최근 {days}일)",
    },
    # --- /privacy, /help ---------------------------------------------------------------
    "privacy.explain": {"en": _PRIVACY_EN, "ko": _PRIVACY_KO},
    "privacy.done": {
        "en": "🧹 Done: {count} stored record(s) about you were deleted.",
        "ko": "🧹 완료: 저장된 내 기록 {count}건을 삭제했습니다.",
    },
    "help.text": {"en": _HELP_EN, "ko": _HELP_KO},
    "help.web": {
        "en": "🖌️ **Paint** (under each image): a private link to paint the area to change in "
        "your browser, with brush, eraser and zoom, then say what to draw there. It works once, "
        "for you alone, for 10 minutes.\n"
        "🌳 **Gallery** (under each image) or `/history` in a thread: every image of the thread "
        "as a tree of branches, with prompts, the model's rewrites, cost and timing.",
        "ko": "🖌️ **칠해서 편집** (이미지 아래): 브라우저에서 붓·지우개·확대로 바꿀 부분을 칠하고 "
        "그곳에 그릴 내용을 적는 개인 링크입니다. 나만, 한 번, 10분 동안 쓸 수 있습니다.\n"
        "🌳 **갤러리** (이미지 아래) 또는 스레드에서 `/기록`: 스레드의 모든 이미지를 갈래 나무로 "
        "보여 주고, 프롬프트와 모델이 바꿔 쓴 프롬프트, 비용, 걸린 시간도 함께 보여 줍니다.",
    },
    # --- instructions sent to the image model (the English text is what is sent) -------
    "prompt.use_references": {
        "en": "Use the attached image(s) as references to create or update the image.",
        "ko": "첨부한 이미지를 참조해서 이미지를 만들거나 수정해 주세요.",
    },
    # --- web studio ---------------------------------------------------------------
    "cmd.history.name": {"en": "history", "ko": "기록"},
    "cmd.history.desc": {
        "en": "A private link to this thread's images as a tree of branches",
        "ko": "이 스레드의 이미지를 갈래 나무로 보여 주는 비공개 링크",
    },
    "button.paint": {"en": "Paint", "ko": "칠해서 편집"},
    "button.gallery": {"en": "Gallery", "ko": "갤러리"},
    "discord.paint_link": {
        "en": "🖌️ Paint over the area to change, type what to do there, and send: {url}\nThe link is yours alone, works once and expires in 10 minutes.",
        "ko": "🖌️ 바꿀 부분을 칠하고, 그곳에 할 일을 적은 뒤 보내세요: {url}\n이 링크는 나만 쓸 수 있고, 한 번만 동작하며 10분 뒤 만료됩니다.",
    },
    "discord.gallery_link": {
        "en": "🖼️ This thread's images as a tree of branches: {url}\nThe link is read-only and expires in an hour.",
        "ko": "🖼️ 이 스레드의 이미지를 갈래 나무로 봅니다: {url}\n읽기 전용 링크이며 1시간 뒤 만료됩니다.",
    },
    "discord.history_no_thread": {
        "en": "Use /history inside a thread (or DM) where the bot draws.",
        "ko": "/기록은 봇이 그림을 그리는 스레드(또는 DM) 안에서 써 주세요.",
    },
    "discord.open_link": {"en": "Open", "ko": "열기"},
}


i18n.register(DISCORD_MESSAGES)
