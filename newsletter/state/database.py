"""The state database itself: its engine, its schema and the one transaction helper.

Every store in `newsletter.state` is a `Database`: it opens the engine, maps a
database failure a person can fix to one `LedgerError` line, and creates the
missing tables of the whole schema (each module adds its own to `metadata`)
under a lock. A SQLite file next to the config by default; PostgreSQL when
several machines share the work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Self
from urllib.parse import unquote

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from newsletter.dberrors import database_name, explain, problem_kind
from newsletter.errors import LedgerError

# Every table of the state database: each module of `newsletter.state` adds its own, and
# importing any of them imports them all (the package's __init__), so the schema is whole.
metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A moment stored as UTC and read back aware in UTC, on every database.

    SQLite keeps only the wall time of what it is given (an offset is dropped,
    so 07:00-04:00 would come back as 07:00 UTC); PostgreSQL answers in the
    session's time zone. Converting on the way in and out makes both agree.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.UTC)
        return value

    def process_result_value(
        self, value: dt.datetime | None, dialect: object
    ) -> dt.datetime | None:
        return _aware(value)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


_DATETIME = sa.DateTime(timezone=True)


class Database:
    """One state database: the engine every store of `newsletter.state` shares.

    Opening it creates whatever tables are missing, for every store, so any
    one store (or the `Ledger`, all of them at once) can be opened on its own.
    """

    def __init__(self, url: str, timezone: dt.tzinfo = dt.UTC) -> None:
        self.url = url
        self.timezone = timezone  # the newsletter's: a list's days are its editor's days
        try:
            # hide_parameters: an error message must not carry subscribers' addresses
            self.engine = sa.create_engine(url, future=True, hide_parameters=True)
            sa.event.listen(self.engine, "handle_error", self._fixable_error)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            _create_schema(self.engine)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            # a bad port is a ValueError, a missing driver an ImportError: all the user's to fix
            raise LedgerError(
                f"cannot open the state database {database_name(url)}: {_safe(exc, url)}"
            ) from None

    def local_day(self, moment: dt.datetime) -> dt.date:
        """The newsletter's date at `moment`: a sign-up at 23:30 UTC counts on the next
        day in Berlin."""
        return moment.astimezone(self.timezone).date()

    def _fixable_error(self, ctx: sa.engine.ExceptionContext) -> Exception | None:
        """A damaged, read-only or full database, or a lost server, as one LedgerError line.

        Everything else keeps its type: the ledger relies on IntegrityError for
        "somebody else got there first", and an unknown error is a bug.
        """
        kind = problem_kind(ctx.original_exception, ctx.is_disconnect)
        if kind is None:
            return None
        detail = _safe(ctx.original_exception, self.url)  # type: ignore[arg-type]
        return LedgerError(explain(kind, self.url, detail))

    def close(self) -> None:
        self.engine.dispose()

    def create_tables(self, tables: Sequence[sa.Table]) -> None:
        """Create another component's tables (APScheduler's job store) under the schema lock."""
        try:
            _create_schema(self.engine, tables)
        except SQLAlchemyError as exc:
            raise LedgerError(
                f"cannot create {', '.join(t.name for t in tables)}: {_safe(exc, self.url)}"
            ) from None

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[sa.Connection]:
        """A transaction that savepoints cannot end early, on SQLite too.

        Python's sqlite3 opens a transaction only before a write, so a SAVEPOINT
        issued first would start (and its RELEASE commit) one of its own. An
        explicit BEGIN IMMEDIATE takes the write lock at once and keeps the block whole.
        """
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            yield conn

    @staticmethod
    def _driver(
        conn: sa.Connection, sql: str, params: tuple[object, ...] | list[tuple[object, ...]]
    ) -> sa.CursorResult[Any]:
        """A hot statement straight to the driver (a list of tuples: executemany), with `?`
        placeholders and `{skip_locked}` adapted to the database."""
        if conn.dialect.name == "postgresql":
            sql = sql.replace("?", "%s").replace("{skip_locked}", "FOR UPDATE SKIP LOCKED")
        else:
            sql = sql.replace("{skip_locked}", "")
        return conn.exec_driver_sql(sql, params)  # type: ignore[arg-type]

    @staticmethod
    def _now(conn: sa.Connection) -> object:
        """Now, as `UTCDateTime` would store it, for a statement sent to the driver."""
        now = utcnow()
        process = _DATETIME.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        return process(now) if process else now

    def ping(self) -> None:
        """A round trip to the database, for the health check."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _insert_missing(
    conn: sa.Connection,
    table: sa.Table,
    key: sa.Column[str],
    rows: dict[str, dict[str, object]],
    scope: sa.ColumnElement[bool] | None = None,
) -> list[str]:
    """Insert the rows whose key is not there yet; returns the keys inserted.

    Portable "insert or ignore": look first, then insert in a savepoint; if
    another writer got in between, go row by row.
    """
    existing: set[str] = set()
    keys = list(rows)
    for i in range(0, len(keys), 500):
        query = sa.select(key).where(key.in_(keys[i : i + 500]))
        if scope is not None:
            query = query.where(scope)
        existing.update(conn.execute(query).scalars())
    new = [k for k in keys if k not in existing]
    try:
        with conn.begin_nested():
            for i in range(0, len(new), 500):
                conn.execute(sa.insert(table), [rows[k] for k in new[i : i + 500]])
        return new
    except sa.exc.IntegrityError:
        inserted = []
        for k in new:
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(table), rows[k])
                inserted.append(k)
            except sa.exc.IntegrityError:
                continue
        return inserted


# Any 64-bit key; every process creating the schema of a PostgreSQL database takes it.
SCHEMA_LOCK_KEY = 0x6E6577736C6574  # "newslet"


def chunks(values: Sequence[int], size: int = 500) -> Iterable[Sequence[int]]:
    """`values` a few hundred at a time: an IN list every database takes."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def lock_for_transaction(conn: sa.Connection, *key: str) -> None:
    """Hold a lock named by `key` until the transaction ends, on PostgreSQL (an advisory
    lock on a 64-bit hash of it); SQLite's BEGIN IMMEDIATE holds the whole database."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.blake2b("\n".join(key).encode(), digest_size=8).digest()
    conn.execute(
        sa.select(sa.func.pg_advisory_xact_lock(int.from_bytes(digest, "big", signed=True)))
    )


def _create_schema(engine: sa.Engine, tables: Sequence[sa.Table] | None = None) -> None:
    """Create the missing tables once, however many processes open a new database at once.

    Two creators would race (the loser's CREATE fails: "already exists", or on
    PostgreSQL a unique violation in its catalogue), so creation holds a lock:
    a transaction-level advisory lock on PostgreSQL, the write lock (BEGIN
    IMMEDIATE) on SQLite. Whoever waited finds the tables there and creates
    nothing. DDL is transactional on both, so the lock covers the whole schema.
    """
    wanted = list(metadata.sorted_tables if tables is None else tables)
    with engine.connect() as conn:
        existing = set(sa.inspect(conn).get_table_names())
        indexed = _index_names(conn)
    later = [  # indexes added to a table after this database was made
        index
        for table in wanted
        if table.name in existing
        for index in table.indexes
        if index.name not in indexed
    ]
    if all(table.name in existing for table in wanted) and not later:
        return  # the usual case: no lock taken
    with _schema_lock(engine) as conn:
        for table in wanted:  # in dependency order, each with its indexes
            table.create(conn, checkfirst=True)
        for index in later:
            index.create(conn, checkfirst=True)


def _index_names(conn: sa.Connection) -> set[str]:
    """The names of the database's indexes, in one query (every command opens it)."""
    if conn.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    elif conn.dialect.name == "postgresql":
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    else:
        inspector = sa.inspect(conn)
        return {
            str(index["name"])
            for table in inspector.get_table_names()
            for index in inspector.get_indexes(table)
        }
    return {str(name) for (name,) in conn.exec_driver_sql(query)}


@contextlib.contextmanager
def _schema_lock(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that no other schema creator runs alongside."""
    if engine.dialect.name == "postgresql":
        # READ COMMITTED: each statement sees what the previous lock holder committed
        options = {"isolation_level": "READ COMMITTED"}
        with engine.connect().execution_options(**options) as conn, conn.begin():
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(SCHEMA_LOCK_KEY)))
            yield conn
        return
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits (busy_timeout) for the write lock
        yield conn


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    # Switching to WAL needs the file to itself and can answer "database is
    # locked" at once, without waiting, while another connection opens it.
    for attempt in range(100):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _safe(exc: Exception, url: str | None = None) -> str:
    """A database error without the URL's password in it."""
    text = (str(getattr(exc, "orig", None) or exc).splitlines() or [type(exc).__name__])[0]
    # the password in the user part, or as a query parameter (libpq takes `?password=`)
    found = re.findall(r"://[^/@:]*:([^/@]+)@|[?&][a-z]*password=([^&]+)", url or "", re.I)
    for secret in {
        unquoted for pair in found for part in pair if part for unquoted in (part, unquote(part))
    }:
        text = text.replace(secret, "***")
    return text


def _aware(moment: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)
