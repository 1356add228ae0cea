"""Sign-in and users (auth feature): ``POST /auth/token`` (OAuth2 password flow),
``GET /users/me``, a user's own password and sessions (``PUT /users/me/password``,
``POST /users/me/sign-out-everywhere``), and user administration for superusers.

See ``security.py`` for hashing, tokens and the ``CurrentUser``/``CurrentSuperuser``
dependencies, and "Users and tokens" in docs/auth.md.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Path, Request, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ...db import Database, ReadSession, get_read_sessionmaker
from ...deps import GUARD, Guard, SessionDep, SessionmakerDep, SettingsDep, include
from ...pagination import DEFAULT_PAGE_SIZE, Cursor, PageSize, decode_cursor, page
from ...schemas import BODY_ERRORS, INT32_MAX, ErrorBody, error_responses
from ...settings import Settings
from .models import User
from .security import (
    BEARER_CHALLENGE,
    EMAIL_PATTERN,
    FORBIDDEN,
    MAX_EMAIL_LENGTH,
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    SIGN_IN,
    SIGN_IN_PATH,
    UNAUTHORIZED,
    CurrentSuperuser,
    CurrentUser,
    SignIn,
    check_password,
    create_access_token,
    hash_password,
    is_email,
    normalize_email,
    signed_in,
    verify_password,
)

router = APIRouter(tags=["auth"])
# Sign-in is the one public route (a request without a token must be able to get one).
sign_in_router = APIRouter(tags=["auth"])

Email = Annotated[
    str,
    Field(max_length=MAX_EMAIL_LENGTH, pattern=EMAIL_PATTERN, examples=["ada@example.com"]),
    AfterValidator(normalize_email),
]
# The schema's bounds; PASSWORD_MIN_LENGTH (at least MIN_PASSWORD_LENGTH) is checked by each
# route (``check_password``) and published as minLength (``document_password_policy``).
Password = Annotated[str, Field(min_length=MIN_PASSWORD_LENGTH, max_length=MAX_PASSWORD_LENGTH)]
UserId = Annotated[int, Path(ge=1, le=INT32_MAX)]
ReadSessionmakerDep = Annotated[async_sessionmaker[ReadSession], Depends(get_read_sessionmaker)]


class SignInForm(BaseModel):
    """OAuth2's password grant (RFC 6749, 4.3), the form /docs' Authorize button sends.

    ``username`` is the account's e-mail address. Scopes and client credentials are accepted
    and ignored (this API has no scopes or registered clients).
    """

    grant_type: Literal["password"] | SkipJsonSchema[None] = None
    username: str = Field(max_length=1024)
    password: str = Field(max_length=1024)
    scope: str = Field(default="", max_length=1024)
    client_id: str | SkipJsonSchema[None] = Field(default=None, max_length=1024)
    client_secret: str | SkipJsonSchema[None] = Field(default=None, max_length=1024)


class Token(BaseModel):
    """An access token (RFC 6749, 5.1): send it as ``Authorization: Bearer <access_token>``."""

    access_token: str
    token_type: Literal["bearer"] = Field(default="bearer")
    expires_in: int = Field(description="seconds the token is valid for")


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    is_active: bool
    is_superuser: bool
    created_at: datetime
    updated_at: datetime


class UserPage(BaseModel):
    """A keyset page, as for items: pass ``next_cursor`` back as ``?cursor=``."""

    items: list[UserRead]
    next_cursor: str | None


# Strict like the item bodies: a JSON ``"true"`` is not a flag, unknown fields are refused.
class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    email: Email
    password: Password
    is_active: bool = True
    is_superuser: bool = False


class UserUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    # May be left out, but not null (as ItemUpdate).
    email: Email | SkipJsonSchema[None] = None
    password: Password | SkipJsonSchema[None] = None
    is_active: bool | SkipJsonSchema[None] = None
    is_superuser: bool | SkipJsonSchema[None] = None

    @field_validator("email", "password", "is_active", "is_superuser")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            msg = "may be omitted but not null"
            raise ValueError(msg)
        return value


class PasswordChange(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    current_password: str = Field(max_length=MAX_PASSWORD_LENGTH)
    new_password: Password


# The fields that set a password, by model: their minLength is PASSWORD_MIN_LENGTH.
PASSWORD_FIELDS = {
    "UserCreate": "password",
    "UserUpdate": "password",
    "PasswordChange": "new_password",
}

TOO_MANY_ATTEMPTS: dict[int | str, dict[str, Any]] = {
    status.HTTP_429_TOO_MANY_REQUESTS: {
        "model": ErrorBody,
        "description": "Too many failed attempts from this address (docs/auth.md)",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}
SIGN_IN_ERRORS: dict[int | str, dict[str, Any]] = {
    **TOO_MANY_ATTEMPTS,
    status.HTTP_401_UNAUTHORIZED: {
        "model": ErrorBody,
        "description": (
            "Unknown e-mail address, wrong password or disabled account (the same answer)"
        ),
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
}
WRONG_PASSWORD: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"model": ErrorBody, "description": "The current password is wrong"}
}
NOT_FOUND = error_responses(status.HTTP_404_NOT_FOUND)
CONFLICT = error_responses(status.HTTP_409_CONFLICT)
ADMIN = UNAUTHORIZED | FORBIDDEN
# Digits only, so /users/me is never taken for a user id (PATCH /users/me is a 405, not a 422).
USER_PATH = "/users/{user_id:int}"


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, database: Database) -> AsyncIterator[None]:
    """The sign-in route's rate limits and the hash unknown addresses are checked against."""
    sign_in = await SignIn.create(settings)
    SIGN_IN.put(app, sign_in)
    yield


def install(app: FastAPI, settings: Settings) -> None:
    include(app, sign_in_router, public=True, max_body_size=settings.max_json_body_bytes)
    # Every route of every feature that is not public needs a signed-in user, who owns what
    # they create (create_app installs this feature first, so its guard covers the others').
    GUARD.put(app, Guard(dependencies=[Depends(signed_in)], responses=UNAUTHORIZED))
    include(app, router, max_body_size=settings.max_json_body_bytes)
    document_password_policy(app, settings.password_min_length)


def document_password_policy(app: FastAPI, min_length: int) -> None:
    """Publish ``PASSWORD_MIN_LENGTH`` as the password fields' minLength in ``app``'s OpenAPI
    document (the models' own schema cannot know the settings)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = build()["components"]["schemas"]
            for model, name in PASSWORD_FIELDS.items():
                schemas[model]["properties"][name]["minLength"] = min_length
        return build()

    app.openapi = openapi  # type: ignore[method-assign]


def _client_address(request: Request) -> str:
    # The real client's address behind a trusted proxy (uvicorn's proxy headers settings).
    return request.client.host if request.client else "unknown"


def _too_many(wait: int | None) -> None:
    if wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many sign-in attempts: try again in {wait} s",
            {"Retry-After": str(wait)},
        )


@sign_in_router.post(SIGN_IN_PATH, responses=SIGN_IN_ERRORS | BODY_ERRORS)
async def sign_in(
    form: Annotated[SignInForm, Form()],
    request: Request,
    read_sessionmaker: ReadSessionmakerDep,
    sessionmaker: SessionmakerDep,
    settings: SettingsDep,
) -> Token:
    """Exchange an e-mail address and password for an access token (OAuth2 password flow).

    The account is read in a session closed before the password is checked, so no connection
    or transaction is held through the hash (on SQLite, a write transaction would hold the
    one write lock for it). Only failures count towards the limits (docs/auth.md); a
    disabled account is refused like a wrong password, so the answer does not confirm it.
    """
    state = SIGN_IN.get(request)
    email = normalize_email(form.username)
    address = _client_address(request)
    _too_many(await state.seconds_to_wait(email, address))
    user = None
    if is_email(email):
        async with read_sessionmaker() as reader:
            user = await reader.scalar(select(User).where(User.email == email))
    # Unknown address or not: one hash is verified either way, so both answers take as long.
    async with state.hashing:
        # Again now that it is this attempt's turn: failures of the attempts it waited for
        # count (at most MAX_CONCURRENT_HASHES - 1 more per process can slip through).
        _too_many(await state.refused(email, address))
        stored_hash = user.password_hash if user else state.dummy_hash
        valid, new_hash = await verify_password(form.password, stored_hash, settings)
    if user is None or not valid or not user.is_active:
        await state.failed(email, address)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "incorrect e-mail address or password", BEARER_CHALLENGE
        )
    await state.succeeded(email, address)
    if new_hash is not None:  # hashed with older parameters: store it with the current ones
        async with sessionmaker() as writer, writer.begin():
            await writer.execute(
                update(User).where(User.id == user.id).values(password_hash=new_hash)
            )
    return _token(user, settings)


def _token(user: User, settings: Settings) -> Token:
    return Token(
        access_token=create_access_token(user.id, settings, version=user.token_version),
        expires_in=settings.access_token_minutes * 60,
    )


@router.get("/users/me", responses=UNAUTHORIZED)
async def read_me(user: CurrentUser) -> UserRead:
    """The signed-in user."""
    return UserRead.model_validate(user)


@router.put(
    "/users/me/password", responses=UNAUTHORIZED | WRONG_PASSWORD | TOO_MANY_ATTEMPTS | BODY_ERRORS
)
async def change_password(
    body: PasswordChange,
    me: CurrentUser,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
) -> Token:
    """Change the signed-in user's password: every token issued before stops working, and
    the answer is a new one for this client.

    A wrong ``current_password`` is a 403 (the token is fine: 401 would tell the client to
    sign in again) and counts as a failed sign-in of the account from this address, so a
    stolen token cannot be used to guess the password faster than signing in would.
    """
    check_password(body.new_password, settings, ("body", "new_password"))
    state = SIGN_IN.get(request)
    address = _client_address(request)
    _too_many(await state.seconds_to_wait(me.email, address))
    async with state.hashing:
        _too_many(await state.refused(me.email, address))
        valid, _ = await verify_password(body.current_password, me.password_hash, settings)
        if not valid:
            await state.failed(me.email, address)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the current password is wrong")
        new_hash = await hash_password(body.new_password, settings)
    # Locked: a concurrent change of the version (sign out everywhere) is not lost.
    user = await session.get(User, me.id, with_for_update=True)
    if user is None or not user.is_active:  # deleted or disabled meanwhile
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "invalid or expired access token", BEARER_CHALLENGE
        )
    user.password_hash = new_hash
    user.token_version += 1
    await session.flush()
    return _token(user, settings)


@router.post(
    "/users/me/sign-out-everywhere",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=UNAUTHORIZED,
)
async def sign_out_everywhere(me: CurrentUser, session: SessionDep) -> None:
    """Revoke every token of the signed-in user, this one included: sign in again."""
    await _revoke_tokens(session, me.id)


async def _revoke_tokens(session: AsyncSession, user_id: int) -> None:
    """Move the user's token version on (in SQL: concurrent changes each count)."""
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(token_version=User.token_version + 1)
        .execution_options(synchronize_session=False)
    )


# --- administration (superusers) -------------------------------------------------------------


async def _get_or_404(session: AsyncSession, user_id: int) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"user {user_id} not found")
    return user


async def _keep_an_active_superuser(session: AsyncSession, user_id: int) -> None:
    """409 if ``user_id`` is the last active superuser, about to be removed (disabled,
    demoted, deleted).

    The active superusers' rows stay locked (``FOR UPDATE``) until the request's transaction
    ends: two superusers removing each other at the same moment take turns, and the second
    sees the first's change (on SQLite, ``BEGIN IMMEDIATE`` has them take turns already).
    """
    active = set(
        await session.scalars(
            select(User.id).where(User.is_active, User.is_superuser).with_for_update()
        )
    )
    if active == {user_id}:
        raise HTTPException(status.HTTP_409_CONFLICT, "at least one active superuser must be left")


async def _flush_or_409(session: AsyncSession, email: str) -> None:
    try:
        await session.flush()
    except IntegrityError:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"a user with e-mail {email!r} already exists"
        ) from None


@router.get("/users", response_model=UserPage, responses=ADMIN)
async def list_users(
    admin: CurrentSuperuser,
    session: SessionDep,
    limit: PageSize = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> dict[str, Any]:
    """Users in id order, a keyset page at a time."""
    statement = select(User).order_by(User.id).limit(limit + 1)
    after = decode_cursor(cursor)
    if after is not None:
        statement = statement.where(User.id > after)
    users = (await session.scalars(statement)).all()
    items, next_cursor = page(users, limit, key=lambda user: user.id)
    return {"items": items, "next_cursor": next_cursor}


@router.post(
    "/users",
    status_code=status.HTTP_201_CREATED,
    responses=ADMIN | BODY_ERRORS | CONFLICT,
)
async def create_user(
    body: UserCreate, admin: CurrentSuperuser, session: SessionDep, settings: SettingsDep
) -> UserRead:
    check_password(body.password, settings, ("body", "password"))
    user = User(
        email=body.email,
        password_hash=await hash_password(body.password, settings),
        is_active=body.is_active,
        is_superuser=body.is_superuser,
    )
    session.add(user)
    await _flush_or_409(session, body.email)
    return UserRead.model_validate(user)


@router.get(USER_PATH, responses=ADMIN | NOT_FOUND)
async def get_user(user_id: UserId, admin: CurrentSuperuser, session: SessionDep) -> UserRead:
    return UserRead.model_validate(await _get_or_404(session, user_id))


@router.patch(USER_PATH, responses=ADMIN | BODY_ERRORS | NOT_FOUND | CONFLICT)
async def update_user(
    user_id: UserId,
    body: UserUpdate,
    admin: CurrentSuperuser,
    session: SessionDep,
    settings: SettingsDep,
) -> UserRead:
    """Change a user. A new password signs the user out everywhere (their tokens stop
    working). Disabling or demoting the last active superuser, yourself included, is a 409:
    someone must be left to administer."""
    changes = body.model_dump(exclude_unset=True)
    if "password" in changes:
        check_password(changes["password"], settings, ("body", "password"))
    if changes.get("is_active") is False or changes.get("is_superuser") is False:
        await _keep_an_active_superuser(session, user_id)
    user = await _get_or_404(session, user_id)
    if "password" in changes:
        user.password_hash = await hash_password(changes.pop("password"), settings)
        await _revoke_tokens(session, user.id)
    for name, value in changes.items():
        setattr(user, name, value)
    await _flush_or_409(session, changes.get("email", user.email))
    return UserRead.model_validate(user)


@router.delete(
    USER_PATH,
    status_code=status.HTTP_204_NO_CONTENT,
    responses=ADMIN | NOT_FOUND | CONFLICT,
)
async def delete_user(user_id: UserId, admin: CurrentSuperuser, session: SessionDep) -> None:
    """Delete a user (yourself too), but not the last active superuser (409)."""
    await _keep_an_active_superuser(session, user_id)
    await session.delete(await _get_or_404(session, user_id))
