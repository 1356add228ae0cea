"""Users and tokens (auth feature): password hashing, access tokens, sign-in rate limits, and
the dependencies that protect a route (``CurrentUser``, ``CurrentSuperuser``).

Passwords are hashed with Argon2id (pwdlib; memory-hard: by default 64 MiB and about 0.15 s
of CPU per hash, see ``PASSWORD_HASH_MEMORY_KIB``), in a worker thread so the event loop keeps
serving. Access tokens are JWTs (PyJWT,
HS256) signed with ``SECRET_KEY``, carrying the user's id (``sub``) and token version
(``ver``), issuer, audience, issue time and expiry; every request that presents one reads the
user again, so a deactivated or deleted user, or a token from before the user's version
changed (a new password, "sign out everywhere"), is refused at once. See docs/auth.md.
"""

import asyncio
import functools
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.security import OAuth2PasswordBearer
from limits import RateLimitItem, parse_many
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import async_sessionmaker

from ... import owners
from ...db import ReadSession, get_read_sessionmaker, get_request_slots
from ...deps import SettingsDep
from ...models import Owned
from ...schemas import INT32_MAX, ErrorBody
from ...settings import Settings
from ...state import AppResource
from .models import User

SIGN_IN_PATH = "/auth/token"
ALGORITHM = "HS256"
CLAIMS = ("sub", "ver", "iss", "aud", "iat", "exp")
# An e-mail address as accounts have them: ASCII, a dot in the domain (HTML's definition,
# which is what browsers check in an email input). Stored lower-cased.
EMAIL_PATTERN = (
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
EMAIL = re.compile(EMAIL_PATTERN)
MAX_EMAIL_LENGTH = 254
# What a password may be: PASSWORD_MIN_LENGTH characters or more (the setting; never fewer
# than MIN_PASSWORD_LENGTH), MAX_PASSWORD_LENGTH at most, which bounds what is hashed.
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
# Sign-ins verifying a hash at once, per process (each hash takes its memory and a core).
MAX_CONCURRENT_HASHES = 2

# Argon2id's lanes (RFC 9106: 4). Memory and passes come from the settings: by default RFC
# 9106's "low memory" choice (64 MiB, 3 passes), argon2-cffi's and pwdlib's own default.
ARGON2_PARALLELISM = 4

# Documented on every protected route: who is asking is unknown (401) or may not (403).
BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {
        "model": ErrorBody,
        "description": "No access token, or one that is malformed, expired or not ours",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    }
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {status.HTTP_403_FORBIDDEN: {"model": ErrorBody}}


@functools.cache
def _argon2id(memory_kib: int, passes: int) -> PasswordHash:
    hasher = Argon2Hasher(time_cost=passes, memory_cost=memory_kib, parallelism=ARGON2_PARALLELISM)
    return PasswordHash((hasher,))


def password_hasher(settings: Settings) -> PasswordHash:
    """The hasher of ``PASSWORD_HASH_MEMORY_KIB`` and ``PASSWORD_HASH_PASSES`` (one per pair)."""
    return _argon2id(settings.password_hash_memory_kib, settings.password_hash_passes)


async def hash_password(password: str, settings: Settings) -> str:
    return await asyncio.to_thread(password_hasher(settings).hash, password)


async def verify_password(
    password: str, password_hash: str, settings: Settings
) -> tuple[bool, str | None]:
    """Whether ``password`` matches, and a new hash when the stored one was made with other
    parameters than the settings' (older, or cheaper)."""
    hasher = password_hasher(settings)
    return await asyncio.to_thread(hasher.verify_and_update, password, password_hash)


def password_problem(password: str, settings: Settings) -> str | None:
    """Why ``password`` may not be set (too short or too long), or None if it may."""
    if len(password) < settings.password_min_length:
        return f"a password needs at least {settings.password_min_length} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"a password has at most {MAX_PASSWORD_LENGTH} characters"
    return None


def check_password(password: str, settings: Settings, loc: tuple[str, ...]) -> None:
    """A 422 in the app's validation error shape, naming the field at ``loc``, unless
    ``password`` meets ``PASSWORD_MIN_LENGTH`` (the schema's own bounds hold already)."""
    problem = password_problem(password, settings)
    if problem is not None:
        raise RequestValidationError([{"type": "password_policy", "loc": loc, "msg": problem}])


def normalize_email(email: str) -> str:
    return email.strip().lower()


def is_email(value: str) -> bool:
    return len(value) <= MAX_EMAIL_LENGTH and EMAIL.fullmatch(value) is not None


# --- access tokens ----------------------------------------------------------------------------


def create_access_token(
    user_id: int, settings: Settings, now: datetime | None = None, *, version: int = 0
) -> str:
    """A signed token for ``user_id`` at token version ``version`` (``User.token_version``:
    a token stops working when the user's version moves on), valid for
    ``ACCESS_TOKEN_MINUTES`` from ``now``."""
    issued = now or datetime.now(UTC)
    claims = {
        "sub": str(user_id),
        "ver": version,
        "iss": settings.token_issuer,
        "aud": settings.token_audience,
        "iat": issued,
        "exp": issued + timedelta(minutes=settings.access_token_minutes),
    }
    return jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=ALGORITHM)


def token_user_id(token: str, settings: Settings) -> int | None:
    """The user id a token carries, or None if it is not one we signed and still valid."""
    subject = token_subject(token, settings)
    return subject[0] if subject is not None else None


def token_subject(token: str, settings: Settings) -> tuple[int, int] | None:
    """The user id and token version a token carries, or None if it is not one we signed
    and still valid.

    Only HS256 is accepted (a token saying ``"alg": "none"`` or any other algorithm is
    refused), signed with ``SECRET_KEY`` or one of ``PREVIOUS_SECRET_KEYS``, with our issuer
    and audience, not expired.
    """
    keys = [settings.secret_key, *settings.previous_secret_keys]
    for key in keys:
        try:
            claims = jwt.decode(
                token,
                key.get_secret_value(),
                algorithms=[ALGORITHM],
                audience=settings.token_audience,
                issuer=settings.token_issuer,
                options={"require": list(CLAIMS)},
            )
        except jwt.InvalidSignatureError:
            continue  # maybe signed with an older key
        except jwt.InvalidTokenError:
            return None
        subject, version = claims["sub"], claims["ver"]
        if not (isinstance(subject, str) and subject.isdecimal() and len(subject) <= 10):
            return None
        # bool is an int in Python, not a version.
        if type(version) is not int or not 0 <= version <= INT32_MAX:
            return None
        user_id = int(subject)
        return (user_id, version) if 1 <= user_id <= INT32_MAX else None
    return None


# --- dependencies -----------------------------------------------------------------------------

# Reads "Authorization: Bearer <token>"; tells OpenAPI (and /docs' Authorize button) where
# tokens come from. auto_error=False: the error below is the app's error body.
bearer_token = OAuth2PasswordBearer(tokenUrl=SIGN_IN_PATH, auto_error=False)


def _unauthorized(detail: str, error: str | None = None) -> HTTPException:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, {"WWW-Authenticate": challenge})


async def current_user(
    token: Annotated[str | None, Depends(bearer_token)],
    read_sessionmaker: Annotated[async_sessionmaker[ReadSession], Depends(get_read_sessionmaker)],
    request_slots: Annotated[asyncio.Semaphore, Depends(get_request_slots)],
    settings: SettingsDep,
) -> User:
    """The signed-in user (401 without a valid token, for a disabled or deleted user, or for a
    token from before the user's token version changed).

    The user is read in a short read session of its own, closed before the handler runs,
    holding one of the database's request slots only while it reads: an authenticated read
    takes no write lock on SQLite (the request's ``SessionDep`` transaction would be
    ``BEGIN IMMEDIATE``). The ``User`` is detached: a handler that changes the user loads it
    again in its own ``SessionDep``. Declare ``CurrentUser`` before ``SessionDep`` in a
    handler's parameters (FastAPI resolves them in order), so a request never holds two
    slots at once; a test walks ``app.routes`` for it.
    """
    if not token:
        raise _unauthorized("not authenticated: send an access token (Authorization: Bearer)")
    subject = token_subject(token, settings)
    user = None
    if subject is not None:
        user_id, version = subject
        async with request_slots, read_sessionmaker() as reader:
            user = await reader.get(User, user_id)
        if user is not None and user.token_version != version:
            user = None  # signed out everywhere, or the password changed, since it was issued
    if user is None or not user.is_active:
        raise _unauthorized("invalid or expired access token", "invalid_token")
    return user


CurrentUser = Annotated[User, Depends(current_user)]


async def current_superuser(user: CurrentUser) -> User:
    """The signed-in user if a superuser (403 for anyone else)."""
    if not user.is_superuser:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this needs a superuser")
    return user


CurrentSuperuser = Annotated[User, Depends(current_superuser)]


# --- owners -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserOwner(owners.Owner):
    """A signed-in user as the owner of rows (``owners.py``): they see and change their own;
    a superuser sees and changes every row."""

    user_id: int
    sees_all: bool

    def scope(self, statement: Select[Any], model: type[Owned]) -> Select[Any]:
        return statement if self.sees_all else statement.where(model.owner_id == self.user_id)

    def may_see(self, row: Owned) -> bool:
        return self.sees_all or row.owner_id == self.user_id

    def claim(self, row: Owned) -> None:
        row.owner_id = self.user_id

    @property
    def identity(self) -> str:
        return f"user:{self.user_id}"


async def signed_in(request: Request, user: CurrentUser) -> None:
    """The guard of every route that is not public (``deps.GUARD``): a signed-in user (401
    without one), recorded as the owner of what the request reads and creates."""
    owners.put(request, UserOwner(user.id, sees_all=user.is_superuser))


# --- sign-in --------------------------------------------------------------------------------


def rate_limiter(settings: Settings) -> MovingWindowRateLimiter:
    """Sign-in failures counted in ``LOGIN_RATE_LIMIT_STORAGE`` (a moving window)."""
    storage = storage_from_string(settings.login_rate_limit_storage)
    if not isinstance(storage, Storage):
        prefix = settings.model_config.get("env_prefix", "")
        msg = f"{prefix}LOGIN_RATE_LIMIT_STORAGE must be an async store (async+...)"
        raise TypeError(msg)
    return MovingWindowRateLimiter(storage)


@dataclass(frozen=True)
class SignInLimits:
    """The ``LOGIN_*`` limits, parsed (docs/auth.md, "Sign-in limits")."""

    # Failures for one account from one client address: beyond, that pair waits (429).
    per_account_address: list[RateLimitItem]
    # Failures from one client address, whatever the accounts: beyond, it waits (429).
    per_address: list[RateLimitItem]
    # Failures for one account from anywhere: beyond, the account is not locked, but each
    # (account, address) pair may make only ``over_account_limit`` attempts.
    per_account: list[RateLimitItem]
    over_account_limit: list[RateLimitItem]

    @classmethod
    def from_settings(cls, settings: Settings) -> "SignInLimits":
        return cls(
            per_account_address=parse_many(settings.login_failures_per_account_address),
            per_address=parse_many(settings.login_failures_per_address),
            per_account=parse_many(settings.login_failures_per_account),
            over_account_limit=parse_many(settings.login_attempts_over_account_limit),
        )


@dataclass
class SignIn:
    """What the sign-in route keeps for the app's lifetime (``routes.py``'s lifespan).

    Only failures count, so no one can lock an owner out by failing in their name: see
    ``seconds_to_wait``.
    """

    # Checked against when no account has the e-mail: an unknown address costs what a wrong
    # password costs, so timing does not tell which addresses have accounts.
    dummy_hash: str
    limits: SignInLimits
    limiter: MovingWindowRateLimiter
    # Sign-ins hashing at once, each holding PASSWORD_HASH_MEMORY_KIB: memory stays bounded
    # under a flood of sign-ins (the others wait here, holding no thread or connection).
    hashing: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(MAX_CONCURRENT_HASHES)
    )

    @classmethod
    async def create(cls, settings: Settings) -> "SignIn":
        return cls(
            dummy_hash=await hash_password("not-a-password-anyone-has", settings),
            limits=SignInLimits.from_settings(settings),
            limiter=rate_limiter(settings),
        )

    async def _wait(self, limits: list[RateLimitItem], *key: str) -> int | None:
        """Seconds until ``key`` is below each of ``limits`` again; None if it is now."""
        for limit in limits:
            if not await self.limiter.test(limit, *key):
                stats = await self.limiter.get_window_stats(limit, *key)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None

    async def refused(self, account: str, address: str) -> int | None:
        """Seconds ``address`` must wait before trying ``account`` again because of failures
        of this pair or of this address; None if it may try now. Counts nothing."""
        limits = self.limits
        return await self._wait(
            limits.per_account_address, "pair", account, address
        ) or await self._wait(limits.per_address, "address", address)

    async def seconds_to_wait(self, account: str, address: str) -> int | None:
        """None when an attempt for ``account`` from ``address`` may go on now, else how many
        seconds until it may.

        While the account is over its cap of failures (from all addresses), the attempt is
        counted against the pair's ``over_account_limit``: guessing slows down, but failures
        from other addresses never stop the owner signing in from theirs.
        """
        wait = await self.refused(account, address)
        if wait is not None:
            return wait
        if await self._wait(self.limits.per_account, "account", account) is None:
            return None
        for limit in self.limits.over_account_limit:
            if not await self.limiter.hit(limit, "slowed", account, address):
                stats = await self.limiter.get_window_stats(limit, "slowed", account, address)
                return max(1, math.ceil(stats.reset_time - time.time()))
        return None

    async def failed(self, account: str, address: str) -> None:
        """Count a failed attempt for the pair, the address and the account."""
        limits = self.limits
        for items, key in (
            (limits.per_account_address, ("pair", account, address)),
            (limits.per_address, ("address", address)),
            (limits.per_account, ("account", account)),
        ):
            for limit in items:
                await self.limiter.hit(limit, *key)

    async def succeeded(self, account: str, address: str) -> None:
        """The pair signed in: its failures are forgotten (the address's and the account's
        stay counted, so one success does not reset a guesser's budget elsewhere)."""
        for limit in self.limits.per_account_address:
            await self.limiter.clear(limit, "pair", account, address)


SIGN_IN = AppResource("sign_in", SignIn)
