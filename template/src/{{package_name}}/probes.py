"""What ``/health/ready`` checks: named checks, each with its own timeout.

The core checks the database itself (``routers/health.py``). A feature that adds a
dependency the app cannot serve without (a job queue's server, an object store's bucket)
adds its check to the app's ``READINESS_CHECKS`` in its lifespan, once its resource is
open, under the name the probe reports (``{"checks": {"<name>": "failed: <error type>"}}``).
The checks run at once: the probe answers within the longest timeout, not their sum.
"""

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from fastapi import FastAPI

from .state import AppResource

OK = "ok"
# What ``/health/ready`` answers: 200 for "ok" and "degraded", 503 for "unavailable".
Readiness = Literal["ok", "degraded", "unavailable"]


@dataclass(frozen=True)
class ReadinessCheck:
    """One dependency: ``probe`` raises, or overruns ``timeout_seconds``, when it cannot be
    used now. A check that is not ``required`` is reported but does not make the app
    unready: the app serves without it, less well (``"status": "degraded"``, still 200)."""

    probe: Callable[[], Awaitable[object]]
    timeout_seconds: float
    required: bool = True

    async def run(self) -> str:
        """``"ok"``, or ``"failed: <error type>"`` (no message: it may name hosts or users)."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self.probe()
        except Exception as exc:  # any failure means "not ready"; it is reported, not raised
            return f"failed: {type(exc).__name__}"
        return OK


# The app's checks besides the database, by name: ``create_app`` puts an empty one.
READINESS_CHECKS: AppResource[dict[str, ReadinessCheck]] = AppResource("readiness_checks", dict)


def add_readiness_checks(app: FastAPI, checks: Mapping[str, ReadinessCheck]) -> None:
    """Check these too before the app is called ready (a name given again is replaced)."""
    READINESS_CHECKS.of(app).update(checks)


async def run_checks(checks: Mapping[str, ReadinessCheck]) -> dict[str, str]:
    """Every check's result, by name; all run at once."""
    results = await asyncio.gather(*(check.run() for check in checks.values()))
    return dict(zip(checks, results, strict=True))


def readiness(checks: Mapping[str, ReadinessCheck], results: Mapping[str, str]) -> Readiness:
    """``"ok"``; ``"degraded"`` when only checks that are not required failed; else
    ``"unavailable"``."""
    failed = [name for name, result in results.items() if result != OK]
    if not failed:
        return "ok"
    return "unavailable" if any(checks[name].required for name in failed) else "degraded"
