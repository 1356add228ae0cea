"""``GET /metrics`` for Prometheus, and the lifespan that sets up metrics and traces.

The route is left out of the OpenAPI document and of the access log (a scrape every few
seconds would drown the lines that matter). See ``telemetry.py`` for what is measured;
another feature adds its own figures and spans in a module rendered with both
(``with_<feature>.py`` in this folder).
"""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from opentelemetry import trace
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from ...db import Database
from ...deps import ReadSessionDep, include
from ...middleware import skip_access_log
from ...settings import Settings
from .telemetry import (
    SCRAPE_HOOKS,
    TRACER_PROVIDER,
    MetricsMiddleware,
    create_tracer_provider,
    multiprocess_dir,
    trace_sql,
    watch_pool,
)

router = APIRouter(tags=["observability"])


@asynccontextmanager
async def lifespan(app: FastAPI, settings: Settings, database: Database) -> AsyncIterator[None]:
    """Pool gauges from the start; traces when an OTLP endpoint is set (flushed at the end)."""
    watch_pool(database.engine)
    provider = create_tracer_provider(settings)
    if provider is not None:
        TRACER_PROVIDER.put(app, provider)
        trace.set_tracer_provider(provider)  # FastAPI's request spans use the global one
        trace_sql(database.engine, provider.get_tracer(__name__))
    try:
        yield
    finally:
        if provider is not None:
            # Sends what is left; it waits on the network, so not on the event loop.
            await asyncio.to_thread(provider.shutdown)
        if multiprocess_dir() is not None:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def install(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(MetricsMiddleware)
    SCRAPE_HOOKS.put(app, [])
    # Public like the health probes: Prometheus scrapes without a token, and the figures
    # name routes and counts, no user data (docs/observability.md).
    include(app, router, public=True)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(skip_access_log)])
async def metrics(request: Request, session: ReadSessionDep) -> Response:
    """The metrics in Prometheus' text format: every worker's, when there are several."""
    for refresh in SCRAPE_HOOKS.get(request):
        await refresh(session)  # figures read at scrape time (a session opens only if used)
    registry = REGISTRY
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    # Collecting reads files (/proc for the process metrics; a file per worker and metric
    # with several workers): off the event loop.
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
