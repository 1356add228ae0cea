"""Create, drop and seed a benchmark database with the raw async driver (no SQLAlchemy).

Runs with a rendered project's Python, which has exactly one of asyncpg, asyncmy or
aiosqlite. ``raw_app.py`` reuses the URL parsing.

    python _dbtool.py create URL      # drop it if it exists, then create it (server backends)
    python _dbtool.py drop URL
    python _dbtool.py seed URL ROWS   # insert ROWS items into the migrated ``items`` table
    python _dbtool.py fill URL ROWS   # the same, server-side and fast, up to ROWS items in all
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
IDENTIFIER_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")
Rows = list[tuple[str, str | None, int]]  # name, description, price_cents


@dataclass(frozen=True)
class DatabaseURL:
    """The parts of a SQLAlchemy URL (``postgresql+asyncpg://user@host:port/db``)."""

    backend: str  # sqlite, postgresql or mysql
    host: str
    port: int
    user: str
    password: str
    database: str  # the file path for SQLite

    @classmethod
    def parse(cls, url: str) -> DatabaseURL:
        scheme, _, rest = url.partition("://")
        backend = scheme.split("+", 1)[0]
        if backend == "sqlite":
            return cls("sqlite", "", 0, "", "", rest.removeprefix("/"))
        if backend not in DEFAULT_PORTS:
            raise SystemExit(f"unsupported database URL: {url}")
        parts = urlsplit(url)
        return cls(
            backend=backend,
            host=parts.hostname or "127.0.0.1",
            port=parts.port or DEFAULT_PORTS[backend],
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
        )

    def server_kwargs(self, *, with_database: bool = True) -> dict[str, Any]:
        """Connection keyword arguments for asyncpg / asyncmy."""
        kwargs: dict[str, Any] = {"host": self.host, "port": self.port, "user": self.user}
        kwargs["password"] = self.password or ("" if self.backend == "mysql" else None)
        if self.backend == "postgresql":
            kwargs["database"] = self.database if with_database else "postgres"
        elif with_database:
            kwargs["database"] = self.database
        return kwargs


def _identifier(name: str) -> str:
    if not name or not set(name) <= IDENTIFIER_CHARS:
        raise SystemExit(f"refusing database name {name!r}: use [a-z0-9_]")
    return name


async def _admin(url: DatabaseURL, statements: list[str]) -> None:
    """Run statements on the server's admin connection, outside any transaction."""
    if url.backend == "postgresql":
        import asyncpg  # only one driver is installed

        conn = await asyncpg.connect(**url.server_kwargs(with_database=False))
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
    else:
        import asyncmy

        conn = await asyncmy.connect(**url.server_kwargs(with_database=False), autocommit=True)
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
        finally:
            await conn.ensure_closed()


def _drop_statement(url: DatabaseURL) -> str:
    name = _identifier(url.database)
    if url.backend == "postgresql":
        return f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    return f"DROP DATABASE IF EXISTS {name}"


async def create(url: DatabaseURL) -> None:
    if url.backend == "sqlite":
        return  # the file is created by the first connection (the migration)
    await _admin(url, [_drop_statement(url), f"CREATE DATABASE {_identifier(url.database)}"])


async def drop(url: DatabaseURL) -> None:
    if url.backend != "sqlite":
        await _admin(url, [_drop_statement(url)])


def item_rows(count: int) -> Rows:
    """Deterministic items: every tenth without a description."""
    return [
        (
            f"item-{i:05d}",
            None if i % 10 == 0 else f"Description of item {i}, seeded for the benchmark.",
            (i * 137) % 100_000,
        )
        for i in range(1, count + 1)
    ]


INSERT = "INSERT INTO items (name, description, price_cents) VALUES ({})"
Summary = tuple[int, int, int]  # count, min(id), max(id)
SUMMARY = "SELECT count(*), min(id), max(id) FROM items"


def _summary(row: Any) -> Summary:
    return int(row[0]), int(row[1]), int(row[2])


async def _seed_postgresql(url: DatabaseURL, rows: Rows) -> Summary:
    import asyncpg

    conn = await asyncpg.connect(**url.server_kwargs())
    try:
        async with conn.transaction():
            await conn.executemany(INSERT.format("$1, $2, $3"), rows)
        return _summary(await conn.fetchrow(SUMMARY))
    finally:
        await conn.close()


async def _seed_mysql(url: DatabaseURL, rows: Rows) -> Summary:
    import asyncmy

    conn = await asyncmy.connect(**url.server_kwargs())
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET time_zone = '+00:00'")  # server defaults in UTC
            await cur.executemany(INSERT.format("%s, %s, %s"), rows)
            await conn.commit()
            await cur.execute(SUMMARY)
            return _summary(await cur.fetchone())
    finally:
        await conn.ensure_closed()


async def _seed_sqlite(url: DatabaseURL, rows: Rows) -> Summary:
    import aiosqlite

    async with aiosqlite.connect(url.database) as conn:
        await conn.executemany(INSERT.format("?, ?, ?"), rows)
        await conn.commit()
        async with conn.execute(SUMMARY) as cur:
            return _summary(await cur.fetchone())


async def seed(url: DatabaseURL, count: int) -> None:
    seeders = {"postgresql": _seed_postgresql, "mysql": _seed_mysql, "sqlite": _seed_sqlite}
    total, first, last = await seeders[url.backend](url, item_rows(count))
    print(f"seeded {url.backend}: {total} items, ids {first}..{last}")


# --- fill: generated by the server ----------------------------------------------------------
# Item n: id n (dense ids, whatever the server's auto-increment would leave as gaps), name
# "item-<n>" (unique), every tenth without a description, as ``item_rows``. Each filler
# inserts items max(id)+1..ROWS in one statement (MySQL: per 100,000), then refreshes the
# planner's statistics (and, on PostgreSQL, the id sequence, and vacuums, so autovacuum does
# not start in the middle of a measurement).

FILL_COLUMNS = "INSERT INTO items (id, name, description, price_cents)"
LAST_ID = "SELECT coalesce(max(id), 0) FROM items"
PG_SEQUENCE = "SELECT setval(pg_get_serial_sequence('items', 'id'), (SELECT max(id) FROM items))"
MYSQL_CHUNK_DIGITS = 5  # 100,000 items per statement


def _fill_select(concat: Callable[..., str]) -> str:
    """The SELECT list for item ``n``, with the backend's string concatenation."""
    name = concat("'item-'", "n")
    description = concat("'Description of item '", "n", "', seeded for the benchmark.'")
    price = "(n * 137) % 100000"
    return f"SELECT n, {name}, CASE WHEN n % 10 = 0 THEN NULL ELSE {description} END, {price}"


def _pipes(*parts: str) -> str:
    return " || ".join(parts)


def _concat(*parts: str) -> str:
    return f"CONCAT({', '.join(parts)})"


async def _fill_postgresql(url: DatabaseURL, total: int) -> Summary:
    import asyncpg

    sql = f"{FILL_COLUMNS} {_fill_select(_pipes)} FROM generate_series($1::int, $2::int) AS n"
    conn = await asyncpg.connect(**url.server_kwargs())
    try:
        first = int(await conn.fetchval(LAST_ID)) + 1
        await conn.execute(sql, first, total)
        await conn.execute(PG_SEQUENCE)
        await conn.execute("VACUUM ANALYZE items")
        return _summary(await conn.fetchrow(SUMMARY))
    finally:
        await conn.close()


def _numbers_mysql(digits: int) -> str:
    """A derived table ``seq(n)``: %s + 0 .. %s + 10**digits - 1, from cross-joined digits."""
    digit = " UNION ALL ".join(f"SELECT {d} AS d" for d in range(10))
    tables = " CROSS JOIN ".join(f"({digit}) AS d{i}" for i in range(digits))
    number = " + ".join(f"{10**i} * d{i}.d" for i in range(digits))
    return f"(SELECT %s + {number} AS n FROM {tables}) AS seq"


async def _fill_mysql(url: DatabaseURL, total: int) -> Summary:
    import asyncmy

    chunk = 10**MYSQL_CHUNK_DIGITS
    numbers = _numbers_mysql(MYSQL_CHUNK_DIGITS)
    select = _fill_select(_concat).replace("%", "%%")  # the driver formats with %
    sql = f"{FILL_COLUMNS} {select} FROM {numbers} WHERE n <= %s"
    conn = await asyncmy.connect(**url.server_kwargs())
    try:
        async with conn.cursor() as cur:
            await cur.execute("SET time_zone = '+00:00'")  # server defaults in UTC
            await cur.execute(LAST_ID)
            (last,) = await cur.fetchone()
            for first in range(int(last) + 1, total + 1, chunk):
                await cur.execute(sql, (first, min(first + chunk - 1, total)))
                await conn.commit()
            await cur.execute("ANALYZE TABLE items")
            await cur.fetchall()
            await cur.execute(SUMMARY)
            return _summary(await cur.fetchone())
    finally:
        await conn.ensure_closed()


async def _fill_sqlite(url: DatabaseURL, total: int) -> Summary:
    import aiosqlite

    numbers = "WITH RECURSIVE seq(n) AS (SELECT ? UNION ALL SELECT n + 1 FROM seq WHERE n < ?)"
    sql = f"{numbers} {FILL_COLUMNS} {_fill_select(_pipes)} FROM seq"
    async with aiosqlite.connect(url.database) as conn:
        async with conn.execute(LAST_ID) as cur:
            (last,) = await cur.fetchone() or (0,)
        await conn.execute(sql, (int(last) + 1, total))
        await conn.commit()
        await conn.execute("ANALYZE")
        async with conn.execute(SUMMARY) as cur:
            return _summary(await cur.fetchone())


async def fill(url: DatabaseURL, total: int) -> None:
    fillers = {"postgresql": _fill_postgresql, "mysql": _fill_mysql, "sqlite": _fill_sqlite}
    started = time.perf_counter()
    count, first, last = await fillers[url.backend](url, total)
    seconds = time.perf_counter() - started
    print(f"filled {url.backend}: {count} items, ids {first}..{last}, in {seconds:.1f} s")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in {"create", "drop", "seed", "fill"}:
        raise SystemExit(__doc__)
    url = DatabaseURL.parse(argv[1])
    if argv[0] == "create":
        asyncio.run(create(url))
    elif argv[0] == "drop":
        asyncio.run(drop(url))
    elif argv[0] == "seed":
        asyncio.run(seed(url, int(argv[2])))
    else:
        asyncio.run(fill(url, int(argv[2])))


if __name__ == "__main__":
    main(sys.argv[1:])
