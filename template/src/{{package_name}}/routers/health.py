"""Liveness (touches nothing) and readiness (checks every dependency) probes."""

import asyncio

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from ..deps import SessionmakerDep, SettingsDep
from ..schemas import HealthStatus

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live")
async def live() -> HealthStatus:
    """The process is up and serving; no dependency is touched."""
    return HealthStatus(status="ok")


@router.get(
    "/ready",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthStatus}},
)
async def ready(
    sessionmaker: SessionmakerDep, settings: SettingsDep, response: Response
) -> HealthStatus:
    """Every dependency answers (a real ``SELECT 1``); otherwise 503 naming the failed check."""
    checks: dict[str, str] = {}
    try:
        async with asyncio.timeout(settings.health_timeout_seconds), sessionmaker() as session:
            await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready"; it is reported, not raised
        checks["database"] = f"failed: {type(exc).__name__}"
    if all(result == "ok" for result in checks.values()):
        return HealthStatus(status="ok", checks=checks)
    response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthStatus(status="unavailable", checks=checks)
