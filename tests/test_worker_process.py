"""The Redis queue end to end, as deployed: the API and `python -m <pkg>.worker` as real
processes, a real Redis, a job posted over HTTP and run by the worker."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .harness import (
    FEATURES,
    Combo,
    free_port,
    http,
    redis_keys,
    render,
    require_server,
    run,
    sync,
    uv,
    wait_ready,
)


def test_api_and_worker_processes_run_a_job(tmp_path: Path) -> None:
    require_server("redis")
    combo = Combo("sqlite", FEATURES, queue="redis")
    project = render(tmp_path / "project", combo.data())
    sync(project, combo.python)
    prefix = combo.package.upper()
    port = free_port()
    queue = f"{combo.package}-e2e"
    env = {
        **os.environ,
        f"{prefix}_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'e2e.db'}",
        f"{prefix}_PORT": str(port),
        f"{prefix}_QUEUE_NAME": queue,
        f"{prefix}_UPLOAD_DIR": str(tmp_path / "uploads"),
        f"{prefix}_LOG_LEVEL": "warning",
    }
    run(uv("run", "--no-sync", "alembic", "upgrade", "heads"), project, env=env)
    python = str(project / ".venv/bin/python")
    api = subprocess.Popen([python, "-m", combo.package], cwd=project, env=env)
    worker_log = tmp_path / "worker.log"
    with worker_log.open("w") as log:
        worker = subprocess.Popen(
            [python, "-m", f"{combo.package}.worker", "--workers", "1"],
            cwd=project,
            env={**env, f"{prefix}_LOG_LEVEL": "info"},
            stderr=log,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/health/ready", time.monotonic() + 60)
        job = http("POST", f"{base}/tasks/word-count", {"text": "four words right here"})
        deadline = time.monotonic() + 30
        status: dict[str, object] = job
        while status["status"] in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.2)
            status = http("GET", f"{base}/tasks/{job['id']}")
        assert status["status"] == "succeeded", status
        assert status["result"] == {"words": 4, "characters": 21}
    finally:
        for process in (api, worker):
            process.send_signal(signal.SIGTERM)
        for process in (api, worker):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        run(
            uv("run", "--no-sync", "python", "-c", DELETE_KEYS, queue),
            project,
        )
    assert worker.returncode == 0
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
