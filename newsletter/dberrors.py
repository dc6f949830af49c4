"""State-database failures a person can fix, said as what happened and what to do.

A damaged file, a read-only file or folder, a full disk, a server gone away:
none of these is a bug, so none may end in a traceback. The ledger
(`newsletter/state/database.py`) turns the driver's error into one `LedgerError`
line naming the database; anything not recognised here (a constraint the ledger
relies on, a bug) keeps its type.

The error codes are the drivers' own (SQLite's result codes, PostgreSQL's
SQLSTATE), not their wording, which differs between versions.
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

# SQLite's primary result codes (an extended code keeps them in its low byte)
_SQLITE: dict[int, str] = {
    sqlite3.SQLITE_CORRUPT: "damaged",
    sqlite3.SQLITE_NOTADB: "damaged",
    sqlite3.SQLITE_READONLY: "read-only",
    sqlite3.SQLITE_PERM: "read-only",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_IOERR: "io",
    sqlite3.SQLITE_CANTOPEN: "cannot-open",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
}

# PostgreSQL's SQLSTATE codes, exact or by class (the first two characters)
_POSTGRES: dict[str, str] = {
    "53100": "full",  # disk_full
    "53": "resources",  # out of memory, too many connections
    "25006": "read-only",  # read_only_sql_transaction: a standby, or a read-only role
    "42501": "permission",  # insufficient_privilege
    "XX001": "damaged",  # data_corrupted
    "XX002": "damaged",  # index_corrupted
    "08": "gone",  # connection exceptions
    "57P": "gone",  # the server shutting down
}


@dataclass(frozen=True)
class Advice:
    what: str
    todo: str


ADVICE: dict[str, Advice] = {
    "damaged": Advice(
        "is damaged",
        "restore it from a backup (sqlite3's .recover command may rescue what is left); "
        "do not delete it: it holds the send history and the suppressions",
    ),
    "read-only": Advice(
        "cannot be written",
        "make the database writable for this user (for SQLite: the file, its folder, "
        "and its -wal and -shm files; `lsattr` shows an immutable flag)",
    ),
    "full": Advice("cannot grow: the disk is full", "free some space, then run the command again"),
    "io": Advice(
        "could not be read or written",
        "check the disk it is on and its free space, then run the command again",
    ),
    "cannot-open": Advice(
        "cannot be opened",
        "check that its folder exists and that this user may read and write there",
    ),
    "busy": Advice(
        "is locked by another process",
        "wait for the other newsletter command to finish, then run this one again",
    ),
    "resources": Advice(
        "is out of resources", "check the database server, then run the command again"
    ),
    "permission": Advice(
        "refused a statement", "grant the database user rights on the newsletter's tables"
    ),
    "gone": Advice(
        "lost its connection", "check that the database server is up, then run the command again"
    ),
}


def problem_kind(error: BaseException, disconnected: bool = False) -> str | None:
    """Which fixable problem a driver error is, or None for anything else.

    Ctrl-C during a query also counts as a "disconnect" to SQLAlchemy: it stays itself.
    """
    if not isinstance(error, Exception):
        return None
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(error, sqlite3.Error) and isinstance(code, int):
        return _SQLITE.get(code & 0xFF)
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str):
        for prefix in (state, state[:3], state[:2]):
            if prefix in _POSTGRES:
                return _POSTGRES[prefix]
    return "gone" if disconnected else None


def database_name(url: str) -> str:
    """The SQLite file, or the URL without its password: enough to find it, nothing secret."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):  # a port that is not a number, say
        return "(an unreadable URL)"
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or "(in memory)"
    # libpq also takes passwords as query parameters: `?password=...`
    secret = {k: "***" for k in parsed.query if "password" in k.lower()}
    return parsed.update_query_dict(secret).render_as_string(hide_password=True)


def explain(kind: str, url: str, detail: str) -> str:
    """One line: the database, what is wrong with it, the driver's words, what to do."""
    advice = ADVICE[kind]
    if kind in ("io", "full"):
        detail += _free_space(url)
    return f"the state database {database_name(url)} {advice.what} ({detail}): {advice.todo}"


def _free_space(url: str) -> str:
    """How much room the SQLite file's disk has left: SQLite says only "disk I/O error"
    when it cannot even create its -shm file on a full disk."""
    name = database_name(url)
    if not name.startswith("/"):
        return ""
    try:
        free = shutil.disk_usage(Path(name).parent).free
    except OSError:
        return ""
    return f"; {free:,} bytes free on its disk"
