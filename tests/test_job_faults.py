"""Jobs under faults, end to end: the API and worker processes, PostgreSQL and a Redis of
the test's own (started, stopped and started again by it). Jobs are posted while Redis is
down and while workers are killed (SIGKILL) and stopped (SIGTERM); every job must succeed,
none may be lost, and no job may run on two workers at once (from the workers' logs: each
run of a job, with its worker and when it started and ended)."""

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from harness import Combo, free_port, http_json, run, serve, start, stop, uv

from .checks import SUITE_URLS, Renders, require_server, server_sql

JOBS_PER_BATCH = 10
JOB_SECONDS = 0.3
# Short leases, polls and grace: a killed worker's jobs run again within seconds.
FAST = {"JOB_LEASE_SECONDS": "3", "JOB_POLL_SECONDS": "0.5", "JOBS_SHUTDOWN_GRACE_SECONDS": "0.2"}
# A run ends with one of these (logged by the worker running it, when the run ends).
RUN_ENDS = ("succeeded", "failed", "stopped by the shutdown", "lost its lease", "retried")


def start_redis(port: int, log: Path) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    assert server, "redis-server is not installed (apt-get install redis-server)"
    command = [
        server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    process = start(command, {}, cwd=log.parent, log=log)
    deadline = time.monotonic() + 10
    while b"Ready to accept connections" not in log.read_bytes():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process


class Worker:
    """A worker process and its log."""

    def __init__(self, name: str, project: Path, env: dict[str, str], logs: Path) -> None:
        self.name, self.log = name, logs / f"{name}.log"
        python = project / ".venv/bin/python"
        package = next(iter(p.name for p in (project / "src").iterdir()))
        cmd = [python, "-m", f"{package}.features.jobs.worker", "--concurrency", "2"]
        self.process = start(cmd, env, cwd=project, log=self.log)
        self.killed_at: datetime | None = None

    def lines(self) -> list[dict[str, str]]:
        text = self.log.read_text() if self.log.is_file() else ""
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def running(self) -> bool:
        """Whether a job has started here and not ended."""
        return any(run_ended is None for *_, run_ended in runs(self))

    def wait_running(self, seconds: float = 10) -> None:
        deadline = time.monotonic() + seconds
        while not self.running():
            assert time.monotonic() < deadline, f"{self.name} ran no job"
            time.sleep(0.02)

    def kill(self) -> None:
        self.killed_at = datetime.now()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def logged_at(line: dict[str, str]) -> datetime:
    return datetime.strptime(line["time"], "%Y-%m-%d %H:%M:%S,%f")


def runs(worker: Worker) -> list[tuple[str, str, datetime, datetime | None]]:
    """Each run of a job on ``worker``: job id, worker, start, end (None: not ended)."""
    found: list[tuple[str, str, datetime, datetime | None]] = []
    open_runs: dict[str, tuple[str, datetime]] = {}
    for line in worker.lines():
        job_id, message = line.get("job_id"), line.get("message", "")
        if job_id is None:
            continue
        if message.endswith(" started"):
            open_runs[job_id] = (line["worker"], logged_at(line))
        elif any(end in message for end in RUN_ENDS) and job_id in open_runs:
            name, started = open_runs.pop(job_id)
            found.append((job_id, name, started, logged_at(line)))
    found.extend((job_id, name, started, None) for job_id, (name, started) in open_runs.items())
    return found


@pytest.mark.slow
def test_no_job_is_lost_to_redis_outages_or_stopped_workers(
    renders: Renders, tmp_path: Path
) -> None:
    require_server("postgresql")
    combo = Combo("postgresql", ("background_tasks",), queue="redis")
    project = renders.installed(combo)
    # Not prefixed by the package (see test_served_contract); a suffix of its own, so that two
    # runs of the template's tests on one server never share it.
    name = f"faults_{combo.package}_{secrets.token_hex(4)}"
    server_sql(project, "postgresql", f"DROP DATABASE IF EXISTS {name}")
    server_sql(project, "postgresql", f"CREATE DATABASE {name}")
    prefix, redis_port, port = combo.package.upper(), free_port(), free_port()
    env = {
        f"{prefix}_DATABASE_URL": SUITE_URLS["postgresql"].format(name=name),
        f"{prefix}_PORT": str(port),
        f"{prefix}_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        f"{prefix}_LOG_LEVEL": "info",
        **{f"{prefix}_{key}": value for key, value in FAST.items()},
    }
    redis_log = tmp_path / "redis.log"
    redis = start_redis(redis_port, redis_log)
    workers: list[Worker] = []
    posted: list[str] = []

    def post_batch(base: str) -> None:
        for n in range(JOBS_PER_BATCH):
            body = {"text": f"job {len(posted)} {n}", "delay_seconds": JOB_SECONDS}
            job = http_json("POST", f"{base}/tasks/word-count", body)
            assert job["status"] == "queued"
            posted.append(job["id"])

    def new_worker() -> Worker:
        workers.append(Worker(f"worker{len(workers) + 1}", project, env, tmp_path))
        return workers[-1]

    try:
        run(uv("run", "--no-sync", "alembic", "upgrade", "heads"), project, env=env)
        api = [project / ".venv/bin/python", "-m", combo.package]
        with serve(api, env, port, cwd=project, log=tmp_path / "api.log") as base:
            killed, stopped = new_worker(), new_worker()
            post_batch(base)  # Redis up
            stop(redis)  # Redis down: the 202s stand, the jobs wait for a poll
            post_batch(base)
            killed.wait_running()
            killed.kill()  # its jobs run again once their leases expire
            new_worker()
            redis = start_redis(redis_port, redis_log)  # back, on the same port
            post_batch(base)
            stopped.wait_running()
            assert stop(stopped.process) == 0  # SIGTERM: finishes or gives back its jobs
            new_worker()
            post_batch(base)
            deadline = time.monotonic() + 60
            pending = list(posted)
            while pending and time.monotonic() < deadline:
                job = http_json("GET", f"{base}/tasks/{pending[0]}")
                if job["status"] == "succeeded":
                    pending.pop(0)
                else:
                    assert job["status"] in ("queued", "running"), job
                    time.sleep(0.1)
            assert pending == [], f"{len(pending)} of {len(posted)} jobs did not succeed"
            results = [http_json("GET", f"{base}/tasks/{job_id}") for job_id in posted]
        for worker in workers:
            if worker.process.poll() is None:
                assert stop(worker.process) == 0, worker.log.read_text()[-2000:]
    finally:
        for worker in workers:
            stop(worker.process, grace=5)
        stop(redis, grace=5)
        server_sql(project, "postgresql", f"DROP DATABASE IF EXISTS {name}")

    assert len(posted) == 4 * JOBS_PER_BATCH
    assert all(job["status"] == "succeeded" for job in results)
    # Every run of every job, on every worker; a killed worker's open runs end at its kill.
    all_runs: dict[str, list[tuple[datetime, datetime, str]]] = {}
    for worker in workers:
        for job_id, worker_name, started, ended in runs(worker):
            end = ended or worker.killed_at
            assert end is not None, f"{job_id} still running on {worker.name}"
            all_runs.setdefault(job_id, []).append((started, end, worker_name))
    assert set(all_runs) == set(posted)
    for job_id, job_runs in all_runs.items():
        job_runs.sort()
        for (_, end, first), (start_next, _, second) in itertools.pairwise(job_runs):
            assert end <= start_next, f"job {job_id} ran on {first} and {second} at once"
    rerun = [job_id for job_id, job_runs in all_runs.items() if len(job_runs) > 1]
    assert rerun, "no job ran twice: the killed and stopped workers had none running"
    attempts = {job["id"]: job["attempts"] for job in results}
    assert all(attempts[job_id] >= 1 for job_id in posted)
