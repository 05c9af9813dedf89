"""Shared fixtures: the stand-ins on random ports, waiting on conditions with a deadline, a
PostgreSQL server of the test session's own, and the `e2e` marker put on every test that runs
the whole bot or a process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import inspect
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FunctionType
from typing import Any, TypeVar
from urllib.parse import quote

import psycopg
import pytest

from fakes.openai_api import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")

# What makes a test end-to-end: the bot in the sandbox, a `python -m ...` process, or a
# benchmark. Looked for in the test, the fixtures it uses and the helpers of its module that it
# calls, so a new test gets the marker without being decorated.
E2E_CALL = re.compile(
    r"\b(sandbox|run_cli|bot_session|BotProcess|create_subprocess_exec|create_subprocess_shell"
    r"|subprocess\.(run|Popen|call|check_call|check_output))\("
)
# Modules that are end-to-end as a whole (their helpers start processes in classes, for one).
E2E_MODULES = re.compile(r"^test_(e2e_|bench_|demo)")
HELPER_DEPTH = 3


@functools.cache
def _source(function: FunctionType) -> str:
    try:
        return inspect.getsource(function)
    except (OSError, TypeError):
        return ""


def _runs_end_to_end(function: Any, namespace: Mapping[str, Any], depth: int = 0) -> bool:
    """Whether `function`, or a helper of its module that it calls, starts the bot or a process."""
    function = inspect.unwrap(function)
    if not isinstance(function, FunctionType):
        return False
    source = _source(function)
    if E2E_CALL.search(source):
        return True
    if depth >= HELPER_DEPTH:
        return False
    for name in set(re.findall(r"\b([A-Za-z_]\w*)\(", source)) - {function.__name__}:
        helper = namespace.get(name)
        if (
            isinstance(helper, FunctionType)
            and helper.__module__ == function.__module__
            and _runs_end_to_end(helper, namespace, depth + 1)
        ):
            return True
    return False


def _is_e2e(item: pytest.Item) -> bool:
    module = getattr(item, "module", None)
    if module is None:
        return False
    if E2E_MODULES.match(module.__name__.rsplit(".", 1)[-1]):
        return True
    namespace = vars(module)
    if _runs_end_to_end(getattr(item, "function", None), namespace):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixture in info.name2fixturedefs.get(name, ()) if info is not None else ():
            home = sys.modules.get(getattr(fixture.func, "__module__", ""), None)
            if _runs_end_to_end(fixture.func, vars(home) if home is not None else {}):
                return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark end-to-end tests `e2e`: `python -m pytest -m "not e2e"` is the quick unit loop."""
    e2e_modules: set[object] = set()
    for item in items:
        if _is_e2e(item):
            item.add_marker(pytest.mark.e2e)
            e2e_modules.add(getattr(item, "module", None))
    # A module's summary of its end-to-end cases reads their results: it goes with them.
    for item in items:
        if getattr(item, "module", None) in e2e_modules and "summary" in item.name:
            item.add_marker(pytest.mark.e2e)


async def wait_until(
    predicate: Callable[[], T | bool | None], *, timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll `predicate` until it is truthy (returning its value), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli_env(
    fake: FakeOpenAI, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for `python -m bot` against the stand-in, isolated from any local .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DISCORD_", "DATABASE_"))
    }
    env.update(
        {
            "OPENAI_API_KEY": "sk-test-not-a-real-key-000000",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_MAX_RETRIES": "0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra or {})
    return env


async def run_cli(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    while_running: Callable[[], Awaitable[None]] | None = None,
    timeout: float = 60.0,
) -> CliResult:
    """Run `python -m bot ARGS` as its own process (cwd without a .env) and collect its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(process.communicate())
    if while_running is not None:
        watcher = asyncio.ensure_future(while_running())
        await asyncio.wait(
            {watcher, communicate}, return_when=asyncio.FIRST_COMPLETED, timeout=timeout
        )
        if not watcher.done():
            watcher.cancel()
            _out, err = await communicate
            raise AssertionError(
                f"the process ended first (exit {process.returncode}): {err.decode()[-2000:]}"
            )
        watcher.result()
    async with asyncio.timeout(timeout):
        stdout, stderr = await communicate
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


# ----- every request the end-to-end tests sent, run again through the stand-ins' checks -----
# A misspelt option must fail a test, not every real call: even when the bot shows the 400 as
# a polite error and the test only looks for *an* answer, the session fails at the end.

_CURRENT_TEST: list[tuple[str, bool]] = [("", False)]
RECORDED: list[tuple[str, str, Any]] = []  # (test id, "openai" | "discord", request)


def recorded_request_violations(recorded: list[tuple[str, str, Any]]) -> list[str]:
    """What the stand-ins' checks refuse among recorded requests, one line per request."""
    from fakes._discord_model import check_request_body
    from fakes._openai_strict import check_request

    found: list[str] = []
    for test, service, request in recorded:
        if service == "openai":
            files = list(request.files)
            error = check_request(request.method, request.path, request.json, request.form, files)
            body = error.body if error is not None else None
        else:
            error = check_request_body(request.method, request.path, request.json)
            body = error.body() if error is not None else None
        if body is not None:
            found.append(f"{test}: {request.method} {request.path} -> {body}")
    return found


@pytest.fixture(autouse=True)
def _name_the_running_test(request: pytest.FixtureRequest) -> Iterator[None]:
    _CURRENT_TEST[0] = (request.node.nodeid, request.node.get_closest_marker("e2e") is not None)
    yield


@pytest.fixture(autouse=True, scope="session")
def _record_end_to_end_requests() -> Iterator[None]:
    """Keep what each stand-in received in an end-to-end test when it closes."""
    from fakes.discord_api import FakeDiscord

    def keeping(cls: Any, service: str) -> Callable[[Any], Awaitable[None]]:
        close = cls.close

        async def close_and_keep(self: Any) -> None:
            test, e2e = _CURRENT_TEST[0]
            if e2e:
                RECORDED.extend((test, service, r) for r in list(self.requests))
            await close(self)

        return close_and_keep

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeOpenAI, "close", keeping(FakeOpenAI, "openai"))
        patch.setattr(FakeDiscord, "close", keeping(FakeDiscord, "discord"))
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when an end-to-end test sent a request the stand-ins' checks refuse."""
    violations = recorded_request_violations(RECORDED)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if violations:
        if reporter is not None:
            reporter.write_sep("=", "requests the real services would refuse", red=True)
            for line in violations[:50]:
                reporter.write_line(line[:500])
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif RECORDED and reporter is not None:
        reporter.write_line(
            f"{len(RECORDED)} recorded end-to-end requests pass the stand-ins' checks"
        )


# PostgreSQL: one server per test session, started from the system's binaries in a temporary
# folder (initdb + pg_ctl, 127.0.0.1 on a free port, a password on TCP), and a fresh database
# per test. Tests on it are not `e2e`: the server is a service like the stand-ins, not the bot.


class PostgresServer:
    """A throw-away PostgreSQL cluster owned by the test session."""

    def __init__(self, bindir: Path, root: Path, owner: str | None, password: str) -> None:
        self.bindir = bindir
        self.root = root
        self.data = root / "data"
        self.owner = owner
        self.password = password
        self.port = 0

    @classmethod
    def start(cls) -> PostgresServer:
        """Find the binaries, make a cluster and start it; fails the session clearly if not."""
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
        initdb = Path(found[-1]) if found else Path(shutil.which("initdb") or "initdb")
        if not initdb.is_file():
            reason = "PostgreSQL's initdb was not found (Debian: apt-get install postgresql)"
            if os.environ.get("CI"):
                pytest.fail(reason)  # CI installs it: a missing server is a broken CI
            pytest.skip(reason)
        # initdb refuses to run as root: the cluster belongs to the `postgres` user then.
        owner = "postgres" if os.geteuid() == 0 else None
        # In memory where there is a tmpfs: creating a database per test is then fast.
        shm = Path("/dev/shm")
        roomy = shm.is_dir() and os.access(shm, os.W_OK)
        if roomy:
            stats = os.statvfs(shm)
            roomy = stats.f_bavail * stats.f_frsize > 1 << 30
        where = shm if roomy else None
        root = Path(tempfile.mkdtemp(prefix="imagine-pg-", dir=where))
        # '@' and ':' in the password make the URLs percent-encode it, as real ones may.
        server = cls(initdb.parent, root, owner, "pw@:" + secrets.token_hex(8))
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        password_file = root / "password"
        password_file.write_text(server.password)
        server._run(
            "initdb", "-D", str(server.data), "-U", "postgres", "--encoding=UTF8",
            "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={password_file}", "--no-sync", "--no-instructions",
        )  # fmt: skip
        password_file.unlink()
        for _attempt in range(3):  # a free port can be taken between probing and binding
            server.port = _free_port()
            settings = (
                f"port = {server.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\nmax_connections = 300\n"
                # Durability is not under test; speed is.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
            (server.data / "postgresql.auto.conf").write_text(settings)
            started = server._run(
                "pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-w",
                "-t", "60", "start", check=False,
            )  # fmt: skip
            if started.returncode == 0:
                return server
        log = (root / "server.log").read_text(errors="replace")[-3000:]
        server.remove()
        pytest.fail(f"PostgreSQL did not start: {started.stderr}\n{log}")

    def _run(
        self, program: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # As the cluster's owner, from a folder it may enter (the checkout may be private).
        ids: dict[str, Any] = {}
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            **ids,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"{program} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    def url(self, database: str = "postgres") -> str:
        """A postgresql:// URL for one database, with the password (percent-encoded)."""
        return (
            f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
            f"{database}"
        )

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """Create an empty database, yield its URL, drop it afterwards."""
        name = "test_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.url(name)
        finally:
            with psycopg.connect(self.url(), autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        self.remove()

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _version_key(path: str) -> int:
    """The major version in /usr/lib/postgresql/<major>/bin/initdb."""
    major = Path(path).parts[-3]
    return int(major) if major.isdigit() else 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server (started on first use, stopped at the end)."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty database on the session's server."""
    with postgres_server.database() as url:
        yield url
