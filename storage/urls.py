"""DATABASE_URL: which backend it names, and how to show it without its password."""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MEMORY = ":memory:"
Backend = Literal["sqlite", "postgresql"]

_SQLITE_EXAMPLES = "sqlite:///relative/path.db or sqlite:////absolute/path.db"
_EXAMPLES = f"{_SQLITE_EXAMPLES}, or postgresql://user:password@host:5432/database"
_SQLITE_SCHEMES = ("sqlite", "sqlite+aiosqlite")
# SQLAlchemy's spellings name a driver after '+'; libpq takes only the bare scheme.
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_HIDDEN = "***"


def _scheme(database_url: str) -> tuple[str, str]:
    """Split a URL into its lower-case scheme and the rest; ValueError if it has no scheme."""
    scheme, separator, rest = database_url.strip().partition("://")
    if not separator:
        raise ValueError(f"DATABASE_URL is not a database URL; expected {_EXAMPLES}")
    return scheme.lower(), rest


def database_backend(database_url: str) -> Backend:
    """Return the backend a DATABASE_URL names; ValueError (without the URL) for others."""
    scheme, _rest = _scheme(database_url)
    if scheme in _SQLITE_SCHEMES:
        return "sqlite"
    if scheme.split("+", 1)[0] in _POSTGRES_SCHEMES:
        return "postgresql"
    raise ValueError(f"DATABASE_URL scheme {scheme!r} is not supported; expected {_EXAMPLES}")


def sqlite_path_from_url(database_url: str) -> str:
    """Return the file path (or ':memory:') that a SQLAlchemy-style sqlite URL names.

    Raises ValueError for anything else. Messages name the scheme but never repeat the URL,
    which may carry a password.
    """
    scheme, rest = _scheme(database_url)
    if scheme not in _SQLITE_SCHEMES:
        if database_backend(database_url) == "postgresql":
            raise ValueError(
                f"DATABASE_URL names PostgreSQL, not a SQLite file ({_SQLITE_EXAMPLES})"
            )
    if rest == "":
        return MEMORY
    # SQLAlchemy's form is sqlite://<empty host>/<path>: three slashes, then the path.
    if not rest.startswith("/"):
        raise ValueError(
            "a sqlite DATABASE_URL has three slashes before a relative path; "
            f"expected {_SQLITE_EXAMPLES}"
        )
    path = rest[1:]
    if "?" in path:
        raise ValueError("query parameters in a sqlite DATABASE_URL are not supported")
    return path or MEMORY


def postgres_conninfo(database_url: str) -> str:
    """Return the libpq connection URI for a postgresql:// DATABASE_URL.

    SQLAlchemy's `postgresql+driver://` spellings are accepted and lose the driver name, which
    libpq does not understand. ValueError (without the URL) for anything else.
    """
    if database_backend(database_url) != "postgresql":
        raise ValueError("DATABASE_URL does not name a PostgreSQL database")
    _scheme_name, rest = _scheme(database_url)
    return f"postgresql://{rest}"


def url_passwords(database_url: str) -> list[str]:
    """Every spelling of the password a URL carries (as written and percent-decoded)."""
    found: list[str] = []
    try:
        parts = urlsplit(database_url.strip())
    except ValueError:
        return found
    userinfo, at, _host = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    for pair in parts.query.split("&"):  # as written: parse_qsl would decode it
        key, _equals, value = pair.partition("=")
        if key.lower() == "password":
            found.append(value)
    found += [unquote(value) for value in found]
    return sorted({value for value in found if value}, key=len, reverse=True)


def redact_url(database_url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by '***'."""
    try:
        parts = urlsplit(database_url.strip())
    except ValueError:
        return scrub(database_url, database_url)
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{_HIDDEN}@{host}"
    query = parts.query
    if any(key.lower() == "password" for key, _value in parse_qsl(query)):
        pairs = [
            (key, _HIDDEN if key.lower() == "password" else value)
            for key, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs, safe="*/")
    if netloc == parts.netloc and query == parts.query:
        return database_url.strip()
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def scrub(text: str, database_url: str) -> str:
    """`text` with every spelling of the URL's password replaced by '***'."""
    for password in url_passwords(database_url):
        text = text.replace(password, _HIDDEN)
    return text


def describe_database(database_url: str) -> str:
    """Say in a few words which database a URL names, without its password."""
    if database_backend(database_url) == "sqlite":
        path = sqlite_path_from_url(database_url)
        return "SQLite in memory" if path == MEMORY else f"SQLite file {path}"
    return f"PostgreSQL {redact_url(postgres_conninfo(database_url))}"
