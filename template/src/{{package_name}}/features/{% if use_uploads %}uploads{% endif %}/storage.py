"""Upload storage: the row that describes a stored file, the interface every backend
implements for its bytes, and the backend's dependency.

Files are stored under server-generated keys (32 lowercase hex characters, a UUID), never
under a client-supplied name. A backend is made by ``create_storage(settings)`` in its own
module and entered by the uploads feature's lifespan.
"""

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy.orm import Mapped, mapped_column

from ...models import Base, Owned, TimestampMixin
from ...state import AppResource

Write = Callable[[bytes], Awaitable[object]]

_KEY = re.compile(r"^[0-9a-f]{32}$")


class Upload(Owned, TimestampMixin, Base):
    """Metadata of a stored upload; the bytes live in the storage backend under ``id``."""

    __tablename__ = "uploads"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    filename: Mapped[str] = mapped_column(sa.String(255))
    content_type: Mapped[str] = mapped_column(sa.String(255))
    size: Mapped[int] = mapped_column(sa.BigInteger)
    sha256: Mapped[str] = mapped_column(sa.String(64))


class StorageUnavailableError(Exception):
    """The storage cannot be reached now (an outage, not a bad request): the uploads
    routes answer 503, and what was being written is not kept."""


def check_key(key: str) -> str:
    """``key`` if it is a storage key, else ValueError: no other name reaches a backend."""
    if not _KEY.fullmatch(key):
        msg = f"invalid storage key {key!r}"
        raise ValueError(msg)
    return key


class Storage(ABC):
    """Where uploaded bytes live. A backend raises ``StorageUnavailableError`` when it cannot be
    reached."""

    @abstractmethod
    def open_write(self, key: str) -> AbstractAsyncContextManager[Write]:
        """Write a new file in chunks; on any exception inside the block nothing is kept."""

    @abstractmethod
    def read(self, key: str, chunk_size: int) -> AsyncIterator[bytes]:
        """Iterate over the file's bytes in chunks (check ``exists`` first)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the file; a missing file is not an error."""

    @abstractmethod
    async def exists(self, key: str) -> bool:
        """Whether a complete file is stored under ``key``."""

    @abstractmethod
    async def keys(self) -> set[str]:
        """Every key holding bytes, complete or still being written (for audits and tests)."""


# An abstract class is fine for the isinstance check inside (mypy issue #4717).
STORAGE = AppResource("storage", Storage)  # type: ignore[type-abstract]


async def get_storage(request: Request) -> Storage:
    return STORAGE.get(request)


StorageDep = Annotated[Storage, Depends(get_storage)]
