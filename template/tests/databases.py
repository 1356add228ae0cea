"""Throw-away databases and Alembic runs for the test suite."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import NullPool, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for this project; ``connection`` makes env.py use it."""
    config = Config()
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


async def run_alembic(engine: AsyncEngine, direction: str, revision: str) -> None:
    """``alembic upgrade|downgrade <revision>`` on ``engine``, inside the running loop."""

    def run(connection: Connection) -> None:
        getattr(command, direction)(alembic_config(connection), revision)

    async with engine.begin() as connection:
        await connection.run_sync(run)


def scratch_url(base: str, suffix: str, tmp_dir: Path) -> URL:
    """A URL for a throw-away database next to ``base`` (a file in ``tmp_dir`` on SQLite)."""
    url = make_url(base)
    if url.get_backend_name() == "sqlite":
        return url.set(database=str(tmp_dir / f"{suffix}.db"))
    return url.set(database=f"{url.database or 'app'}_{suffix}")


async def _admin(url: URL, statement: str) -> None:
    """Run a CREATE/DROP DATABASE for ``url``'s database on its server."""
    admin_db = "postgres" if url.get_backend_name() == "postgresql" else "mysql"
    engine = create_async_engine(
        url.set(database=admin_db), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    try:
        async with engine.connect() as connection:
            name = connection.dialect.identifier_preparer.quote(url.database or "")
            await connection.execute(text(statement.format(name=name)))
    finally:
        await engine.dispose()


@asynccontextmanager
async def scratch_database(url: URL) -> AsyncIterator[str]:
    """Create the database ``url`` names, yield its URL, and drop it, also after a failure."""
    if url.get_backend_name() == "sqlite":
        yield url.render_as_string(hide_password=False)
        return
    try:
        await _admin(url, "DROP DATABASE IF EXISTS {name}")
        await _admin(url, "CREATE DATABASE {name}")
    except (OSError, SQLAlchemyError) as exc:
        pytest.fail(
            f"cannot create a test database on {url.render_as_string()}: {exc}. "
            "Start the database server or set TEST_DATABASE_URL.",
            pytrace=False,
        )
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        await _admin(url, "DROP DATABASE IF EXISTS {name}")
