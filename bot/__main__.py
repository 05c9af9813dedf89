"""`python -m bot <command>`: run (default), generate, demo, doctor, copy-database."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.cli import add_copy_database_arguments, add_generate_arguments, generate
from bot.logs import setup_logging
from bot.settings import Settings
from storage import url_passwords


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(prog="python -m bot", description="A Discord image studio.")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the bot (the default)")
    add_generate_arguments(sub.add_parser("generate", help="one headless turn, written to files"))
    demo = sub.add_parser("demo", help="a scripted session against the built-in stand-ins")
    demo.add_argument("--out", type=Path, default=Path("demo-out"))
    sub.add_parser("doctor", help="check settings, the database and the tokens")
    add_copy_database_arguments(
        sub.add_parser("copy-database", help="copy the SQLite database into PostgreSQL")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, read the settings once, and run the command."""
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = Settings()
    except Exception as exc:
        print(f"error: the settings are not valid: {exc}", file=sys.stderr)
        return 2
    secrets = [
        s.get_secret_value()
        for s in (settings.discord_token, settings.openai_api_key)
        if s is not None
    ]
    # Database passwords ride in URLs: keep them out of every log line too.
    for url in (settings.database_url, getattr(args, "to", None), getattr(args, "source", None)):
        secrets += url_passwords(url) if url else []
    setup_logging(settings.log_level if command == "run" else "WARNING", secrets)
    if command == "generate":
        return asyncio.run(generate(args, settings))
    if command == "copy-database":
        from bot.cli import copy_database

        return asyncio.run(copy_database(args, settings))
    if command == "doctor":
        from bot.doctor import run_checks

        return asyncio.run(run_checks(settings))
    if command == "demo":
        from bot.demo import run_demo

        code: int = asyncio.run(run_demo(args.out, settings))
        return code
    from cogs.app import run_bot

    return asyncio.run(run_bot(settings))


if __name__ == "__main__":
    sys.exit(main())
