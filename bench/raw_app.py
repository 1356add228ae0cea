"""Raw-driver baseline for ``db_load.py``: ``GET /items/{id}`` with no SQLAlchemy.

Run with the rendered project's Python, so FastAPI, uvicorn and the driver are the very
versions the rendered app uses. Configured from the environment:

    RAW_DATABASE_URL   SQLAlchemy-style URL (postgresql+asyncpg, mysql+asyncmy, sqlite+aiosqlite)
    RAW_POOL_SIZE      connections kept open (default 10)
    RAW_HOST, RAW_PORT, RAW_LOG_LEVEL

The response has the rendered app's JSON shape; timestamps are ISO 8601 UTC with ``Z``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Protocol

import uvicorn
from _dbtool import DatabaseURL
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

COLUMNS = "id, name, description, price_cents, created_at, updated_at"
Row = tuple[Any, ...]
SQLITE_PRAGMAS = (  # as the rendered app sets them per connection
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
)


class Store(Protocol):
    async def fetch_item(self, item_id: int) -> Row | None: ...
    async def ping(self) -> None: ...
    async def close(self) -> None: ...


class PostgresStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: DatabaseURL, size: int) -> PostgresStore:
        import asyncpg  # only the backend's driver is installed

        kwargs = url.server_kwargs()
        return cls(await asyncpg.create_pool(min_size=size, max_size=size, **kwargs))

    async def fetch_item(self, item_id: int) -> Row | None:
        row = await self.pool.fetchrow(f"SELECT {COLUMNS} FROM items WHERE id = $1", item_id)
        return None if row is None else tuple(row)

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def close(self) -> None:
        await self.pool.close()


class MySQLStore:
    def __init__(self, pool: Any) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, url: DatabaseURL, size: int) -> MySQLStore:
        import asyncmy

        kwargs = url.server_kwargs()
        return cls(await asyncmy.create_pool(minsize=size, maxsize=size, autocommit=True, **kwargs))

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Row | None:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            row = await cur.fetchone()
            return None if row is None else tuple(row)

    async def fetch_item(self, item_id: int) -> Row | None:
        return await self._one(f"SELECT {COLUMNS} FROM items WHERE id = %s", (item_id,))

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def close(self) -> None:
        self.pool.close()
        await self.pool.wait_closed()


class SQLiteStore:
    """A fixed set of aiosqlite connections (each has its own thread) handed out by a queue."""

    def __init__(self, connections: list[Any]) -> None:
        self.connections = connections
        self.idle: asyncio.Queue[Any] = asyncio.Queue()
        for conn in connections:
            self.idle.put_nowait(conn)

    @classmethod
    async def open(cls, url: DatabaseURL, size: int) -> SQLiteStore:
        import aiosqlite

        connections = []
        for _ in range(size):
            conn = await aiosqlite.connect(url.database, isolation_level=None)
            for pragma in SQLITE_PRAGMAS:
                await conn.execute(pragma)
            connections.append(conn)
        return cls(connections)

    async def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Row | None:
        conn = await self.idle.get()
        try:
            async with conn.execute(sql, args) as cur:
                row = await cur.fetchone()
                return None if row is None else tuple(row)
        finally:
            self.idle.put_nowait(conn)

    async def fetch_item(self, item_id: int) -> Row | None:
        return await self._one(f"SELECT {COLUMNS} FROM items WHERE id = ?", (item_id,))

    async def ping(self) -> None:
        await self._one("SELECT 1")

    async def close(self) -> None:
        for conn in self.connections:
            await conn.close()


async def open_store(url: str, size: int) -> Store:
    parsed = DatabaseURL.parse(url)
    stores = {"postgresql": PostgresStore, "mysql": MySQLStore, "sqlite": SQLiteStore}
    store: Store = await stores[parsed.backend].open(parsed, size)
    return store


def iso_utc(value: datetime | str) -> str:
    """ISO 8601 UTC as pydantic writes it; SQLite gives text, MySQL naive UTC datetimes."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def item_json(row: Row) -> bytes:
    item_id, name, description, price_cents, created_at, updated_at = row
    body = {
        "id": item_id,
        "name": name,
        "description": description,
        "price_cents": price_cents,
        "created_at": iso_utc(created_at),
        "updated_at": iso_utc(updated_at),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def create_app(url: str, pool_size: int) -> FastAPI:
    stores: list[Store] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stores.append(await open_store(url, pool_size))
        try:
            yield
        finally:
            await stores.pop().close()

    app = FastAPI(title="raw baseline", lifespan=lifespan)

    @app.get("/health/ready")
    async def ready() -> Response:
        await stores[0].ping()
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/items/{item_id}")
    async def get_item(item_id: int) -> Response:
        row = await stores[0].fetch_item(item_id)
        if row is None:
            return JSONResponse({"detail": f"item {item_id} not found"}, status_code=404)
        return Response(item_json(row), media_type="application/json")

    return app


def main() -> None:
    app = create_app(os.environ["RAW_DATABASE_URL"], int(os.environ.get("RAW_POOL_SIZE", "10")))
    uvicorn.run(
        app,
        host=os.environ.get("RAW_HOST", "127.0.0.1"),
        port=int(os.environ.get("RAW_PORT", "8001")),
        workers=1,
        log_level=os.environ.get("RAW_LOG_LEVEL", "warning"),
    )


if __name__ == "__main__":
    main()
