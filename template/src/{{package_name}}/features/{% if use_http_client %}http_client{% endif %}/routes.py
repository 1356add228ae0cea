"""Example route calling an upstream service through the shared HTTP client.

Upstream failures map to clear gateway errors: timeout -> 504, unreachable or a 5xx
answer or a body that is not JSON -> 502. Each answers within the configured timeouts.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import httpx2
from fastapi import APIRouter, FastAPI, HTTPException, Path, status
from pydantic import BaseModel

from ...db import Database
from ...deps import include
from ...schemas import error_responses
from ...settings import Settings
from .client import HTTP_CLIENT, HttpClientDep, create_http_client

router = APIRouter(prefix="/upstream", tags=["upstream"])


class UpstreamResult(BaseModel):
    """What the example upstream route returns: the upstream's status and JSON body."""

    upstream_status: int
    data: object


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, database: Database) -> AsyncIterator[None]:
    """The shared client, open for the app's lifetime (see ``features/registry.py``)."""
    async with create_http_client(settings) as client:
        HTTP_CLIENT.put(app, client)
        yield


def install(app: FastAPI, settings: Settings) -> None:
    include(app, router, max_body_size=settings.max_json_body_bytes)


GATEWAY_ERRORS = error_responses(
    status.HTTP_404_NOT_FOUND, status.HTTP_502_BAD_GATEWAY, status.HTTP_504_GATEWAY_TIMEOUT
)


@router.get("/{resource}", responses=GATEWAY_ERRORS)
async def fetch_resource(
    resource: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")],
    client: HttpClientDep,
) -> UpstreamResult:
    """Fetch ``<upstream base URL>/<resource>`` and return its JSON body."""
    try:
        response = await client.get(f"/{resource}")
    except httpx2.TimeoutException:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, "upstream timed out") from None
    except httpx2.TransportError as exc:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"upstream unreachable ({type(exc).__name__})"
        ) from None
    if response.status_code == status.HTTP_404_NOT_FOUND:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"upstream has no {resource!r}")
    if response.is_error:
        raise HTTPException(
            status.HTTP_502_BAD_GATEWAY, f"upstream answered {response.status_code}"
        )
    try:
        data = response.json()
    except ValueError:
        raise HTTPException(status.HTTP_502_BAD_GATEWAY, "upstream sent a non-JSON body") from None
    return UpstreamResult(upstream_status=response.status_code, data=data)
