"""Idempotency keys: a client that retries a ``POST`` which creates something (an item, a job,
a stored file) sends the same ``Idempotency-Key`` header again, and gets the first answer
again (status, body, ``Location``) instead of a second row.

A route takes part by taking ``IdempotencyDep`` (a JSON body, hashed here) or
``StreamedIdempotencyDep`` (a body the route reads itself, such as a streamed file: it calls
``settle`` with its own hash once it has read it) **before** ``SessionDep`` in its parameters,
documenting ``RESPONSES``, and by calling ``record`` with its answer on the request's session
before that commits. Without the header nothing changes.

What happens to a key (per owner, ``owners.Owner.identity``, and per route, so two users'
keys never meet):

1. The first request reserves it: a row without an answer, committed at once in a short
   transaction of its own, so that a second request with the key sees it. That one gets a
   409 while the first is in progress.
2. The route's answer is written into that row by ``record`` in the route's own transaction:
   the row it created and the answer commit together, or neither does.
3. A retry with the same body gets the stored answer again (``Replay``, with
   ``Idempotent-Replayed: true``); with another body, a 422.
4. A first attempt that fails gives the key back (its reservation is deleted): only answers
   that were committed are kept. One whose process died holds the key for
   ``IDEMPOTENCY_LOCK_SECONDS``; a retry then takes it over, and should the first attempt
   still finish, its ``record`` finds the key gone and it rolls back (409).
5. Keys expire after ``IDEMPOTENCY_KEY_HOURS``: an expired key is a new one, and expired rows
   are deleted when their key comes again, and all of them at most once an hour per process.

The reads and the reservation run in short sessions of their own, each holding one of the
database's request slots only while it runs, before the request's session opens (hence
"before ``SessionDep``"): a request never holds two slots, and on SQLite no write lock is
held while the route works.
"""

import asyncio
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import Depends, Header, HTTPException, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import ReadSession, get_read_sessionmaker, get_request_slots
from .deps import SessionmakerDep, SettingsDep
from .models import IdempotencyKey, utcnow
from .owners import OwnerDep
from .schemas import ErrorBody
from .state import AppResource

logger = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Printable ASCII without spaces: a UUID, a ULID, any token a client makes.
KEY_PATTERN = r"^[!-~]+$"
PURGE_EVERY = timedelta(hours=1)
# Reserving a key races other requests with it; each lost race is looked up again.
RESERVE_TRIES = 3

RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_409_CONFLICT: {
        "model": ErrorBody,
        "description": "Conflict, or the first request with this Idempotency-Key is still in "
        "progress (retry later)",
    },
    status.HTTP_422_UNPROCESSABLE_CONTENT: {
        "model": ErrorBody,
        "description": "Validation Error, or this Idempotency-Key was used with another body",
    },
}
"""What routes that take an idempotency key add to their documented answers."""


class Replay(Exception):  # noqa: N818 - an answer, not an error
    """Answer the request with ``response``, the first answer to its key (see ``replay``)."""

    def __init__(self, response: Response) -> None:
        super().__init__("replayed answer")
        self.response = response


async def replay(request: Request, exc: Exception) -> Response:
    """The app's handler for ``Replay`` (``errors.add_error_handlers`` installs it)."""
    if not isinstance(exc, Replay):  # registered for Replay only
        raise exc
    return exc.response


def digest(*parts: str | bytes) -> str:
    """A hash of a request's parts, to compare a retry with the first attempt."""
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()


def json_body_hash(body: bytes) -> str:
    """A hash of a JSON body that ignores spacing and the order of keys."""
    try:
        canonical = json.dumps(
            json.loads(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
    except ValueError:  # not JSON: the bytes as they are
        canonical = body
    return digest(canonical)


@dataclass
class _Purges:
    """When this process next deletes the expired keys."""

    next_at: datetime = field(default_factory=utcnow)


PURGES = AppResource("idempotency_purges", _Purges)


@dataclass
class Idempotency:
    """One request's idempotency key (``key`` is None when the request sent none)."""

    key: str | None = None
    row_id: str = ""
    attempt: str = ""
    status_code: int = status.HTTP_200_OK
    # The stored first answer, if there is one: the route answers it instead (``settle``).
    first: IdempotencyKey | None = None
    request_hash: str | None = None

    @property
    def answered(self) -> bool:
        """Whether this key has an answer already: the route must not do its work again
        (and reads the body only to ``settle`` it)."""
        return self.first is not None

    @property
    def reserved(self) -> bool:
        return self.key is not None and self.first is None

    def settle(self, request_hash: str) -> None:
        """Compare the request with the first one with this key: the first answer again
        (raises ``Replay``) for the same, a 422 for another; nothing if this is the first."""
        self.request_hash = request_hash
        first = self.first
        if first is None:
            return
        if first.request_hash != request_hash:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                f"{HEADER} {self.key!r} was used before with another request body: "
                "send a new key for a new request",
            )
        headers = {**(first.response_headers or {}), REPLAYED_HEADER: "true"}
        raise Replay(
            JSONResponse(first.response_body, first.status_code or status.HTTP_200_OK, headers)
        )

    async def record(
        self, session: AsyncSession, answer: object, headers: Mapping[str, str] | None = None
    ) -> None:
        """Store ``answer`` (and the ``headers`` a retry should get again, e.g. ``Location``)
        as the answer to this key, in ``session``'s transaction: it commits with the rows the
        route wrote, or not at all."""
        if self.key is None:
            return
        if self.request_hash is None:
            msg = "settle(request_hash) comes before record"
            raise RuntimeError(msg)
        result = await session.execute(
            sa.update(IdempotencyKey)
            .where(
                IdempotencyKey.id == self.row_id,
                IdempotencyKey.attempt == self.attempt,
                IdempotencyKey.status_code.is_(None),
            )
            .values(
                request_hash=self.request_hash,
                status_code=self.status_code,
                response_body=jsonable_encoder(answer),
                response_headers=dict(headers or {}),
                locked_until=None,
            )
            .execution_options(synchronize_session=False)
        )
        if getattr(result, "rowcount", 0) != 1:
            # Held longer than IDEMPOTENCY_LOCK_SECONDS, and a retry took the key over.
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"{HEADER} {self.key!r} was taken over by a later request: this one is undone",
            )


NO_KEY = Idempotency()

KeyHeader = Annotated[
    str | None,
    Header(
        alias=HEADER,
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        pattern=KEY_PATTERN,
        description="Send the same key again to retry this request safely: a retry with the "
        "same body gets the first answer again and creates nothing; the key with another "
        "body is a 422, and while the first request is in progress a 409. Keys expire after "
        "a day (IDEMPOTENCY_KEY_HOURS). E.g. a UUID.",
    ),
]


class IdempotencyKeys:
    """The dependency behind ``IdempotencyDep`` and ``StreamedIdempotencyDep``."""

    def __init__(self, *, json_body: bool) -> None:
        self.json_body = json_body

    async def __call__(
        self,
        request: Request,
        owner: OwnerDep,
        settings: SettingsDep,
        sessionmaker: SessionmakerDep,
        read_sessionmaker: Annotated[
            async_sessionmaker[ReadSession], Depends(get_read_sessionmaker)
        ],
        request_slots: Annotated[asyncio.Semaphore, Depends(get_request_slots)],
        key: KeyHeader = None,
    ) -> AsyncIterator[Idempotency]:
        if key is None:
            yield NO_KEY
            return
        route = getattr(request.scope.get("route"), "path_format", request.url.path)
        route = f"{request.method} {route}"
        scope = owner.identity
        idempotency = Idempotency(
            key=key,
            row_id=digest(scope, route, key),
            attempt=uuid.uuid4().hex,
            status_code=getattr(request.scope.get("route"), "status_code", None) or 200,
        )

        async def find() -> IdempotencyKey | None:
            async with request_slots, read_sessionmaker() as reader:
                row: IdempotencyKey | None = await reader.get(IdempotencyKey, idempotency.row_id)
                return row

        async def reserve(dead: bool) -> bool:
            """Insert the reservation (replacing a dead row); False when another request
            inserted one first."""
            now = utcnow()
            try:
                async with request_slots, sessionmaker() as session:
                    if dead:
                        await session.execute(
                            sa.delete(IdempotencyKey)
                            .where(IdempotencyKey.id == idempotency.row_id, _dead(now))
                            .execution_options(synchronize_session=False)
                        )
                    session.add(
                        IdempotencyKey(
                            id=idempotency.row_id,
                            key=key,
                            scope=scope,
                            route=route,
                            attempt=idempotency.attempt,
                            locked_until=now + timedelta(seconds=settings.idempotency_lock_seconds),
                            expires_at=now + timedelta(hours=settings.idempotency_key_hours),
                        )
                    )
                    await session.commit()
            except (IntegrityError, OperationalError):  # a duplicate, or a deadlock on MySQL
                return False
            return True

        for _ in range(RESERVE_TRIES):
            row = await find()
            now = utcnow()
            if row is not None and row.expires_at > now and row.status_code is not None:
                idempotency.first = row
                break
            if row is not None and row.expires_at > now and _locked(row, now):
                raise HTTPException(
                    status.HTTP_409_CONFLICT,
                    f"a request with {HEADER} {key!r} is in progress: retry once it has ended",
                    headers={"Retry-After": "1"},
                )
            if await reserve(dead=row is not None):
                await _purge_if_due(request, sessionmaker, request_slots)
                break
        else:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"{HEADER} {key!r} is in use by requests that arrived together: retry",
                headers={"Retry-After": "1"},
            )

        if self.json_body:
            idempotency.settle(json_body_hash(await request.body()))
        try:
            yield idempotency
        except BaseException:
            # The route failed, or its transaction did not commit: give the key back.
            if idempotency.reserved:
                await _release(idempotency, sessionmaker, request_slots)
            raise


def _locked(row: IdempotencyKey, now: datetime) -> bool:
    return row.locked_until is not None and row.locked_until > now


def _dead(now: datetime) -> sa.ColumnElement[bool]:
    """Rows a new request may replace: expired, or a first attempt that stopped holding it."""
    return sa.or_(
        IdempotencyKey.expires_at <= now,
        sa.and_(IdempotencyKey.status_code.is_(None), IdempotencyKey.locked_until <= now),
    )


async def _release(
    idempotency: Idempotency,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_slots: asyncio.Semaphore,
) -> None:
    try:
        async with request_slots, sessionmaker() as session:
            await session.execute(
                sa.delete(IdempotencyKey)
                .where(
                    IdempotencyKey.id == idempotency.row_id,
                    IdempotencyKey.attempt == idempotency.attempt,
                    IdempotencyKey.status_code.is_(None),
                )
                .execution_options(synchronize_session=False)
            )
            await session.commit()
    except SQLAlchemyError:
        # It stays reserved until IDEMPOTENCY_LOCK_SECONDS have passed.
        logger.warning("could not release %s %r", HEADER, idempotency.key, exc_info=True)


async def _purge_if_due(
    request: Request,
    sessionmaker: async_sessionmaker[AsyncSession],
    request_slots: asyncio.Semaphore,
) -> None:
    """Delete every expired key, at most once per ``PURGE_EVERY`` in each process."""
    purges = PURGES.find(request.app)
    if purges is None:
        purges = _Purges()
        PURGES.put(request.app, purges)
    now = utcnow()
    if now < purges.next_at:
        return
    purges.next_at = now + PURGE_EVERY
    try:
        async with request_slots, sessionmaker() as session:
            await session.execute(
                sa.delete(IdempotencyKey)
                .where(IdempotencyKey.expires_at <= now)
                .execution_options(synchronize_session=False)
            )
            await session.commit()
    except SQLAlchemyError:
        logger.warning("could not delete expired idempotency keys", exc_info=True)


# Declare it before ``SessionDep`` in a route's parameters (see the module's docstring).
IdempotencyDep = Annotated[Idempotency, Depends(IdempotencyKeys(json_body=True), scope="function")]
StreamedIdempotencyDep = Annotated[
    Idempotency, Depends(IdempotencyKeys(json_body=False), scope="function")
]
