"""Background jobs: what a job is, how one runs, and the runner every backend implements.

The ``jobs`` table is the queue (docs/jobs.md). A request commits a row with status
``queued``; a ``JobWorker`` claims it with a conditional UPDATE (``SELECT ... FOR UPDATE SKIP
LOCKED`` first where the database has it), which takes a lease on it, runs it, renews the
lease while it runs and records the outcome only while it still holds the lease. So:

- a job committed as ``queued`` runs, whatever became of the hand-off: the hand-off only
  wakes a worker early, the workers also look for due jobs every ``job_poll_seconds``;
- a job whose runner died runs again once its lease expires, never on two runners at once:
  a runner that cannot renew its lease in time stops the job;
- ``RetryJob`` (or a timeout) runs it again later with exponential backoff, up to
  ``job_max_attempts``; each claim counts an attempt, so a job that kills its runner ends
  ``failed`` too;
- on shutdown, running jobs get a grace period, then are given back (``queued``, the
  attempt not counted) for the next runner.
"""

import asyncio
import contextlib
import enum
import logging
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Annotated, Any, Protocol, Self, runtime_checkable

import sqlalchemy as sa
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from ...logs import log_context
from ...models import Base, Owned, TimestampMixin, UTCDateTime, utcnow
from ...settings import Settings
from ...state import AppResource

logger = logging.getLogger(__name__)


class JobStatus(enum.StrEnum):
    """Where a job is: queued -> running -> succeeded | failed."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Job(Owned, TimestampMixin, Base):
    """A background job and its persisted status; payload and result are JSON documents."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(sa.String(64))
    # The values as they are ("queued", ...) in a VARCHAR with a CHECK constraint on every
    # backend: a status added later is a new constraint, not a database type to alter.
    status: Mapped[JobStatus] = mapped_column(
        sa.Enum(
            JobStatus,
            name="status",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda statuses: [status.value for status in statuses],
        ),
        index=True,
    )
    payload: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON(none_as_null=True))
    # The error of the last attempt (the final one once ``failed``).
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Claims so far; a claim counts whether the attempt ends or its runner dies.
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    # When a queued job is due (now, or later for a retry); the order in which jobs run.
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        UTCDateTime, default=utcnow, index=True
    )
    # The runner of the latest attempt, when it started and until when it holds the job.
    worker: Mapped[str | None] = mapped_column(sa.String(128))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WordCountJob(BaseModel):
    """Payload of the example job: count the words of a text, optionally after a pause."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # 50,000 characters fit the 1 MiB JSON body limit however they are escaped (12 bytes for
    # a character outside the BMP), so a valid body is never a 413.
    text: str = Field(max_length=50_000)
    delay_seconds: float = Field(default=0.0, ge=0, le=60)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    status: JobStatus
    result: dict[str, Any] | None = None
    error: str | None = None
    attempts: int = Field(description="runs started so far, the current one included")
    next_attempt_at: datetime | None = Field(
        default=None, description="when a queued job is due (later than now for a retry)"
    )
    started_at: datetime | None = Field(default=None, description="start of the latest run")
    created_at: datetime
    updated_at: datetime


JobFunction = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class RetryJob(Exception):  # noqa: N818 (an instruction, not an error report)
    """Raise it from a job function for a passing failure (a service briefly down): the job
    runs again after a backoff, until ``job_max_attempts``, then fails with this message."""


async def word_count(payload: dict[str, Any]) -> dict[str, Any]:
    """The example job: count words and characters, after an optional pause."""
    job = WordCountJob.model_validate(payload)
    if job.delay_seconds:
        await asyncio.sleep(job.delay_seconds)
    return {"words": len(job.text.split()), "characters": len(job.text)}


JOB_FUNCTIONS: dict[str, JobFunction] = {"word_count": word_count}
# Timeouts of kinds that need another one than ``job_timeout_seconds``, in seconds.
JOB_TIMEOUTS: dict[str, float] = {}


def job_read(job: Job) -> JobRead:
    return JobRead.model_validate(job)


@dataclass(frozen=True)
class JobPolicy:
    """How jobs run: leases, attempts, backoff and timeouts (settings ``job_*``)."""

    lease_seconds: float = 30.0
    max_attempts: int = 3
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 300.0
    timeout_seconds: float = 600.0

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            lease_seconds=settings.job_lease_seconds,
            max_attempts=settings.job_max_attempts,
            retry_backoff_seconds=settings.job_retry_backoff_seconds,
            retry_backoff_max_seconds=settings.job_retry_backoff_max_seconds,
            timeout_seconds=settings.job_timeout_seconds,
        )

    def backoff(self, attempt: int) -> timedelta:
        """The pause after failed attempt ``attempt`` (1, 2, ...): doubling, capped."""
        seconds = self.retry_backoff_seconds * 2 ** min(attempt - 1, 30)
        return timedelta(seconds=min(seconds, self.retry_backoff_max_seconds))

    def timeout(self, kind: str) -> float:
        return JOB_TIMEOUTS.get(kind, self.timeout_seconds)


def worker_name() -> str:
    """Who holds a lease: host, process and a random part (a pid is reused)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Claim:
    """A job this runner holds: its attempt number is the lease's version."""

    job_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    worker: str
    attempt: int


class LeaseLostError(Exception):
    """The job's lease expired or went to another runner: this one must stop it."""


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    """Due queued jobs, and running jobs whose runner let the lease expire."""
    return or_(
        and_(Job.status == JobStatus.QUEUED, Job.next_attempt_at <= now),
        and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now),
    )


async def claim_job(
    sessionmaker: async_sessionmaker[AsyncSession],
    policy: JobPolicy,
    worker: str,
    job_id: uuid.UUID | None = None,
) -> Claim | None:
    """Take the next due job (or ``job_id`` if it is due) and its lease; None if there is none."""
    claims = await claim_jobs(sessionmaker, policy, worker, 1, job_id)
    return claims[0] if claims else None


async def claim_jobs(
    sessionmaker: async_sessionmaker[AsyncSession],
    policy: JobPolicy,
    worker: str,
    limit: int,
    job_id: uuid.UUID | None = None,
) -> list[Claim]:
    """Take up to ``limit`` due jobs (or ``job_id`` if it is due) and their leases in one
    transaction, the earliest due first; an empty list if there is none.

    The UPDATE is conditional on each row being claimable and unchanged since it was read,
    so of two runners only one gets a job, on every backend. PostgreSQL and MySQL also
    skip rows another runner is claiming (``FOR UPDATE SKIP LOCKED``; SQLite has one
    writer at a time). A job whose runner died for the last allowed attempt is failed here.
    """
    while True:
        now = utcnow()
        query = (
            select(Job.id, Job.kind, Job.payload, Job.status, Job.attempts)
            .where(_claimable(now))
            .order_by(Job.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if job_id is not None:
            query = query.where(Job.id == job_id)
        async with sessionmaker() as session:
            connection = await session.connection()
            rows = (await connection.execute(query)).all()
            if not rows:
                return []
            spent = [row for row in rows if _spent(row.status, row.attempts, policy)]
            fresh = [row for row in rows if not _spent(row.status, row.attempts, policy)]
            updated: list[int] = []
            for row in spent:
                failed = (
                    update(Job)
                    .where(Job.id == row.id, Job.attempts == row.attempts, _claimable(now))
                    .values(status=JobStatus.FAILED, error=_spent_error(row.attempts))
                )
                result = await connection.execute(failed.values(updated_at=now))
                updated.append(result.rowcount)
            if fresh:
                unchanged = [and_(Job.id == row.id, Job.attempts == row.attempts) for row in fresh]
                claimed = (
                    update(Job)
                    .where(or_(*unchanged), _claimable(now))
                    .values(
                        status=JobStatus.RUNNING,
                        attempts=Job.attempts + 1,
                        worker=worker,
                        started_at=now,
                        lease_expires_at=now + timedelta(seconds=policy.lease_seconds),
                        updated_at=now,
                    )
                )
                updated.append((await connection.execute(claimed)).rowcount)
            if updated != [1] * len(spent) + ([len(fresh)] if fresh else []):
                # A row changed since it was read (its lock skipped or not taken): read again.
                await session.rollback()
                if job_id is not None:
                    return []  # another runner has it
                continue
            await session.commit()
        for row in spent:
            logger.error("job %s failed: %s", row.id, _spent_error(row.attempts))
        for row in fresh:
            logger.info("job %s claimed (attempt %d)", row.id, row.attempts + 1)
        if fresh:
            return [Claim(row.id, row.kind, row.payload, worker, row.attempts + 1) for row in fresh]


def _spent(status: JobStatus, attempts: int, policy: JobPolicy) -> bool:
    """A running job whose lease expired during its last allowed attempt: failed, not run."""
    return status == JobStatus.RUNNING and attempts >= policy.max_attempts


def _spent_error(attempts: int) -> str:
    return f"its runner stopped during each of {attempts} attempts"


async def _update_claimed(
    sessionmaker: async_sessionmaker[AsyncSession], claim: Claim, **values: Any
) -> bool:
    """Write to the job only while this claim still holds it; False if it does not."""
    async with sessionmaker() as session:
        connection = await session.connection()
        result = await connection.execute(
            update(Job)
            .where(
                Job.id == claim.job_id,
                Job.status == JobStatus.RUNNING,
                Job.worker == claim.worker,
                Job.attempts == claim.attempt,
            )
            .values(**values, updated_at=utcnow())
        )
        await session.commit()
    return result.rowcount == 1


async def _keep_lease(
    sessionmaker: async_sessionmaker[AsyncSession], claim: Claim, policy: JobPolicy
) -> None:
    """Renew the lease every third of it; raise ``LeaseLostError`` once it is lost, or
    about to expire without a renewal (the database unreachable): then another runner may
    take the job, so this one must stop it."""
    margin = min(1.0, policy.lease_seconds / 10)  # for the clocks of other runners
    held_until = time.monotonic() + policy.lease_seconds
    while True:
        pause = min(policy.lease_seconds / 3, held_until - time.monotonic() - margin)
        await asyncio.sleep(max(pause, 0))
        if time.monotonic() >= held_until - margin:
            raise LeaseLostError
        started = time.monotonic()
        try:
            expires = utcnow() + timedelta(seconds=policy.lease_seconds)
            if not await _update_claimed(sessionmaker, claim, lease_expires_at=expires):
                raise LeaseLostError
        except LeaseLostError:
            raise
        except Exception:  # the database unreachable: try again while the lease lasts
            logger.warning("could not renew the lease of job %s", claim.job_id, exc_info=True)
        else:
            held_until = started + policy.lease_seconds


async def run_claim(
    claim: Claim, sessionmaker: async_sessionmaker[AsyncSession], policy: JobPolicy
) -> None:
    """Run a claimed job and record its outcome while the claim holds the job.

    Every line logged meanwhile carries the job's id and runner (``logs.log_context``).
    """
    with log_context(job_id=claim.job_id, worker=claim.worker):
        await _run_claim(claim, sessionmaker, policy)


async def _run_claim(
    claim: Claim, sessionmaker: async_sessionmaker[AsyncSession], policy: JobPolicy
) -> None:
    logger.info("job %s started", claim.kind)
    job_task = asyncio.current_task()
    lost = False

    async def guard() -> None:
        nonlocal lost
        try:
            await _keep_lease(sessionmaker, claim, policy)
        except LeaseLostError:
            lost = True
            if job_task is not None:
                job_task.cancel()

    guard_task = asyncio.create_task(guard())
    try:
        async with asyncio.timeout(policy.timeout(claim.kind)):
            result = await JOB_FUNCTIONS[claim.kind](claim.payload)
    except asyncio.CancelledError:
        if not lost:  # a shutdown after the grace period: give the job back
            logger.info("job %s stopped by the shutdown", claim.kind)
            await _give_back(sessionmaker, claim)
            raise
        if job_task is not None:
            job_task.uncancel()
        logger.warning("job %s lost its lease: stopped here, the new runner has it", claim.kind)
        return
    except TimeoutError:
        error = f"TimeoutError: the job ran longer than {policy.timeout(claim.kind):g} s"
    except RetryJob as exc:
        error = _describe(exc)
    except Exception as exc:
        logger.exception("job %s failed", claim.kind)
        await _record(sessionmaker, claim, status=JobStatus.FAILED, error=_describe(exc))
        return
    else:
        await _record(sessionmaker, claim, status=JobStatus.SUCCEEDED, result=result, error=None)
        logger.info("job %s succeeded", claim.kind)
        return
    finally:
        guard_task.cancel()
    if claim.attempt < policy.max_attempts:
        due = utcnow() + policy.backoff(claim.attempt)
        logger.warning("job %s attempt %d failed, retried: %s", claim.kind, claim.attempt, error)
        await _record(
            sessionmaker, claim, status=JobStatus.QUEUED, error=error, next_attempt_at=due
        )
    else:
        logger.error("job %s failed after %d attempts: %s", claim.kind, claim.attempt, error)
        await _record(sessionmaker, claim, status=JobStatus.FAILED, error=error)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _record(
    sessionmaker: async_sessionmaker[AsyncSession], claim: Claim, **values: Any
) -> None:
    if not await _update_claimed(sessionmaker, claim, lease_expires_at=None, **values):
        logger.warning("job %s: another runner holds it now; outcome not recorded", claim.kind)


async def _give_back(sessionmaker: async_sessionmaker[AsyncSession], claim: Claim) -> None:
    try:
        given_back = await _update_claimed(
            sessionmaker,
            claim,
            status=JobStatus.QUEUED,
            attempts=claim.attempt - 1,
            lease_expires_at=None,
            next_attempt_at=utcnow(),
        )
    except Exception:  # its lease expires instead
        logger.warning("could not give job %s back", claim.job_id, exc_info=True)
        return
    if given_back:
        logger.info("job %s given back: it runs again on the next runner", claim.kind)


async def execute_job(
    job_id: uuid.UUID,
    sessionmaker: async_sessionmaker[AsyncSession],
    policy: JobPolicy,
    worker: str,
) -> bool:
    """Claim this job and run it, if it is due and no other runner holds it; False if not
    (a finished job is never run again)."""
    claim = await claim_job(sessionmaker, policy, worker, job_id)
    if claim is None:
        logger.info("job %s is not due or another runner holds it; not running it", job_id)
        return False
    await run_claim(claim, sessionmaker, policy)
    return True


class JobWorker:
    """Claims due jobs from the database and runs them, ``concurrency`` at a time.

    ``async with``: claims on entry, then every ``poll_seconds``, whenever woken (``wake``:
    a new job) and whenever one of its jobs ends; ``stop`` gives running jobs the grace
    period, then cancels them, which gives them back. Jobs started with ``spawn`` (a
    hand-off in the same process) are its own too, outside ``concurrency``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        policy: JobPolicy,
        *,
        concurrency: int,
        poll_seconds: float,
        name: str | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.policy = policy
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.name = name or worker_name()
        self.tasks: set[asyncio.Task[Any]] = set()
        self._claimed: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        await self._claim_due()
        self._loop = asyncio.create_task(self._claim_loop(), name=f"jobs-{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop(0)

    def wake(self) -> None:
        self._wake.set()

    def spawn(self, job: Coroutine[Any, Any, Any]) -> None:
        """Run ``job`` (e.g. ``execute_job``) as one of this worker's jobs."""
        task = asyncio.create_task(job)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _spawn_claimed(self, claim: Claim) -> None:
        task = asyncio.create_task(run_claim(claim, self.sessionmaker, self.policy))
        self.tasks.add(task)
        self._claimed.add(task)
        task.add_done_callback(self._claimed_done)

    def _claimed_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self._claimed.discard(task)
        self.wake()  # a free slot

    async def _claim_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await self._wake.wait()
            if self._stopping:
                return
            self._wake.clear()
            await self._claim_due()

    async def _claim_due(self) -> None:
        while (free := self.concurrency - len(self._claimed)) > 0 and not self._stopping:
            try:
                claims = await claim_jobs(self.sessionmaker, self.policy, self.name, free)
            except Exception:  # the database unreachable: the next poll tries again
                logger.warning("could not claim jobs", exc_info=True)
                return
            for claim in claims:
                self._spawn_claimed(claim)
            if len(claims) < free:
                return

    async def wait_idle(self) -> None:
        """Wait until every job started has finished."""
        while self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def stop(self, grace_seconds: float) -> None:
        """Claim nothing more; give running jobs ``grace_seconds``, then give them back."""
        self._stopping = True
        self.wake()
        if self._loop is not None:
            await self._loop
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=grace_seconds)
        pending = set(self.tasks)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


@runtime_checkable
class JobRunner(AbstractAsyncContextManager["JobRunner"], Protocol):
    """What the app needs of a job runner, whichever ``task_queue``: entered by the lifespan
    (``async with``: start up, then shut down), handed committed job ids by requests."""

    async def start(
        self, job_id: uuid.UUID, sessionmaker: async_sessionmaker[AsyncSession]
    ) -> None:
        """Hand over a job whose row is committed with status ``queued``; returns at once.
        Best effort: a job whose hand-off fails is found by the runners' next poll."""


# A protocol is fine for the isinstance check inside (runtime_checkable; mypy issue #4717).
JOB_RUNNER = AppResource("job_runner", JobRunner)  # type: ignore[type-abstract]


async def get_job_runner(request: Request) -> JobRunner:
    return JOB_RUNNER.get(request)


JobRunnerDep = Annotated[JobRunner, Depends(get_job_runner)]
