"""The Redis queue end to end, as deployed: the API and `python -m <pkg>.worker` as real
processes, a real Redis, a job posted over HTTP and run by the worker."""

import json
import time
from pathlib import Path

import pytest

from harness import FEATURES, Combo, free_port, http_json, run, serve, start, stop, uv

from .checks import Renders, create_superuser, redis_keys, require_server, sign_in


@pytest.mark.slow
def test_api_and_worker_processes_run_a_job(renders: Renders, tmp_path: Path) -> None:
    require_server("redis")
    combo = Combo("sqlite", FEATURES, queue="redis")
    project = renders.installed(combo)
    prefix = combo.package.upper()
    port = free_port()
    queue = f"{combo.package}-e2e"
    env = {
        f"{prefix}_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}",
        f"{prefix}_PORT": str(port),
        f"{prefix}_QUEUE_NAME": queue,
        f"{prefix}_UPLOAD_DIR": str(tmp_path / "uploads"),
        f"{prefix}_LOG_LEVEL": "warning",
    }
    run(uv("run", "--no-sync", "alembic", "upgrade", "heads"), project, env=env)
    create_superuser(project, combo.package, env)
    python = project / ".venv/bin/python"
    worker_log = tmp_path / "worker.log"
    worker = start(
        [python, "-m", f"{combo.package}.features.jobs.worker", "--concurrency", "1"],
        {**env, f"{prefix}_LOG_LEVEL": "info"},
        cwd=project,
        log=worker_log,
    )
    try:
        with serve([python, "-m", combo.package], env, port, cwd=project) as base:
            headers = sign_in(base)  # every feature is on: jobs need a user
            body = {"text": "four words right here"}
            job = http_json("POST", f"{base}/tasks/word-count", body, headers=headers)
            deadline = time.monotonic() + 30
            status = job
            while status["status"] in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.2)
                status = http_json("GET", f"{base}/tasks/{job['id']}", headers=headers)
            assert status["status"] == "succeeded", status
            assert status["result"] == {"words": 4, "characters": 21}
    finally:
        returncode = stop(worker, grace=20)
        run(uv("run", "--no-sync", "python", "-c", DELETE_KEYS, queue), project)
    assert returncode == 0, worker_log.read_text()[-3000:]
    assert redis_keys(project, queue) == []
    # The worker logs like the API: JSON lines; a job's lines carry its id.
    lines = [json.loads(line) for line in worker_log.read_text().splitlines() if line.strip()]
    job_lines = [line for line in lines if line.get("job_id") == job["id"]]
    assert [line["message"] for line in job_lines] == [
        "job word_count started",
        "job word_count succeeded",
    ], lines


DELETE_KEYS = """
import asyncio, sys
import redis.asyncio as redis

async def main() -> None:
    client = redis.from_url("redis://127.0.0.1:6379/0")
    keys = [k async for k in client.scan_iter(match=sys.argv[1] + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()

asyncio.run(main())
"""
