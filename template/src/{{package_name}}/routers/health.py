"""Liveness (touches nothing) and readiness (checks every dependency) probes."""

from functools import partial

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..deps import SessionmakerDep, SettingsDep
from ..probes import READINESS_CHECKS, ReadinessCheck, readiness, run_checks
from ..schemas import HealthStatus

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> HealthStatus:
    """The process is up and serving; no dependency is touched."""
    return HealthStatus(status="ok")


async def select_one(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session:
        await session.execute(text("SELECT 1"))


@router.get(
    "/ready",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthStatus}},
)
async def ready(
    request: Request, sessionmaker: SessionmakerDep, settings: SettingsDep, response: Response
) -> HealthStatus:
    """Every dependency answers within its timeout: the database (a real ``SELECT 1``) and
    each one a feature added (``probes.py``); otherwise 503 naming the failed checks. One
    the app serves without (not ``required``) is named but leaves it ready: "degraded"."""
    database = ReadinessCheck(partial(select_one, sessionmaker), settings.health_timeout_seconds)
    checks = {"database": database, **READINESS_CHECKS.get(request)}
    results = await run_checks(checks)
    state = readiness(checks, results)
    if state == "unavailable":
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthStatus(status=state, checks=results)
