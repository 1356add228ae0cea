"""``Annotated`` dependency aliases of the app's core resources (settings, sessions).

An optional feature's aliases live in its own module, next to what they provide.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request, params
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .db import ReadSession, get_read_session, get_session, get_sessionmaker
from .settings import Settings
from .state import AppResource

SETTINGS = AppResource("settings", Settings)


async def get_settings(request: Request) -> Settings:
    return SETTINGS.get(request)


SettingsDep = Annotated[Settings, Depends(get_settings)]
# scope="function": commit/rollback run before the response is sent (see db.get_session).
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
# For handlers that only read: no COMMIT round trip (see db.ReadSession); writes are refused.
ReadSessionDep = Annotated[ReadSession, Depends(get_read_session, scope="function")]
SessionmakerDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessionmaker)]


@dataclass(frozen=True)
class Guard:
    """What a group of routes requires of every request (dependencies that may refuse it) and
    the answers that adds to their documentation."""

    dependencies: Sequence[params.Depends] = ()
    responses: dict[int | str, dict[str, Any]] = field(default_factory=dict)


# What every route requires but the public ones (the health probes, and those a feature mounts
# as public, such as a sign-in or a metrics scrape): nothing, unless a feature puts a guard
# here in its ``install`` (auth: a signed-in user). Routes reach the app through ``include``
# below, which applies it, so a route added later is guarded too.
GUARD = AppResource("guard", Guard)


def include(
    app: FastAPI, router: APIRouter, *, public: bool = False, max_body_size: int | None = None
) -> None:
    """Mount ``router``'s routes on ``app`` behind the app's ``GUARD`` (unless ``public``).

    ``create_app`` installs the feature that guards (auth) before every other, so the guard is
    in place when their routes are included.
    """
    guard = Guard() if public else GUARD.find(app) or Guard()
    app.include_router(
        router,
        dependencies=guard.dependencies,
        responses=guard.responses,
        max_body_size=max_body_size,
    )
