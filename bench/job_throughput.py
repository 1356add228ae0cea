"""Jobs per second through the Redis queue: the design before (``--before``, default: where
this branch left main) and after (this work tree), measured in the same run.

    uv run python bench/job_throughput.py [--jobs 1000] [--workers 2] [--runs 3]

For each design: renders ``background_tasks`` with the Redis queue on PostgreSQL, migrates a
database of its own, posts ``--jobs`` jobs (no pause in them) through the served API while
no worker runs, then starts ``--workers`` worker processes and times the drain: from the
first job leaving ``queued`` to the last one ``succeeded`` (the database polled every 20 ms).
Workers: ``--concurrency 16`` each where the worker takes it (the database is the queue);
``--workers 1`` each for a render from before that (taskiq on a Redis stream, its default of
100 jobs at a time per process; issue 22 measured that design against the first claims).
Needs PostgreSQL and Redis on 127.0.0.1. Prints each run and the medians; the last line is
a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness import ROOT, free_port, http_json, render, run, serve, start, stop, sync, uv
from tests.checks import SUITE_URLS, server_sql
from tests.releases import git

ANSWERS = {"features": ["background_tasks"], "task_queue": "redis", "database": "postgresql"}
PACKAGE = "my_service"

DRAIN = """
import asyncio, json, sys, time
import asyncpg

async def main() -> None:
    url, total = sys.argv[1].replace("+asyncpg", ""), int(sys.argv[2])
    connection = await asyncpg.connect(url)
    first = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        queued, done = await connection.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'queued'),"
            " count(*) FILTER (WHERE status = 'succeeded') FROM jobs"
        )
        now = time.monotonic()
        if first is None and queued < total:
            first = now
        if done == total:
            print(json.dumps({"seconds": now - first}))
            return
        await asyncio.sleep(0.02)
    sys.exit("the jobs did not drain in 600 s")

asyncio.run(main())
"""


def measure(project: Path, design: str, jobs: int, workers: int, tmp: Path) -> float:
    """Seconds to drain ``jobs`` queued jobs with ``workers`` worker processes."""
    name = f"bench_jobs_{design}"
    url = SUITE_URLS["postgresql"].format(name=name)
    server_sql(project, "postgresql", f"DROP DATABASE IF EXISTS {name}")
    server_sql(project, "postgresql", f"CREATE DATABASE {name}")
    prefix, port = PACKAGE.upper(), free_port()
    env = {
        f"{prefix}_DATABASE_URL": url,
        f"{prefix}_PORT": str(port),
        f"{prefix}_QUEUE_NAME": f"bench-jobs-{design}-{time.time_ns()}",
        f"{prefix}_LOG_LEVEL": "warning",
    }
    python = project / ".venv/bin/python"
    try:
        run(uv("run", "--no-sync", "alembic", "upgrade", "heads"), project, env=env)
        with serve([python, "-m", PACKAGE], env, port, cwd=project) as base:
            body = {"text": "one two three"}
            with ThreadPoolExecutor(8) as pool:
                posts = [pool.submit(http_json, "POST", f"{base}/tasks/word-count", body)]
                posts += [
                    pool.submit(http_json, "POST", f"{base}/tasks/word-count", body)
                    for _ in range(jobs - 1)
                ]
                assert all(post.result()["status"] == "queued" for post in posts)
            time.sleep(1)  # the last hand-offs (after the responses) are done
            options = ["--concurrency", "16"] if claims(project) else ["--workers", "1"]
            # 0.9.0 moved each feature into features/<name>/
            moved = (project / f"src/{PACKAGE}/features/jobs/worker.py").exists()
            worker = f"{PACKAGE}.features.jobs.worker" if moved else f"{PACKAGE}.worker"
            processes = [
                start(
                    [python, "-m", worker, *options],
                    env,
                    cwd=project,
                    log=tmp / f"{design}-worker{n}.log",
                )
                for n in range(workers)
            ]
            try:
                drained = run([python, "-c", DRAIN, url, str(jobs)], project)
            finally:
                for process in processes:
                    stop(process)
        return float(json.loads(drained.stdout)["seconds"])
    finally:
        server_sql(project, "postgresql", f"DROP DATABASE IF EXISTS {name}")


def claims(project: Path) -> bool:
    """Whether the render's worker claims jobs from the database (takes ``--concurrency``)."""
    return "--concurrency" in (project / "src" / PACKAGE / "worker.py").read_text()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", help="the commit of the design before (default: merge base)")
    args = parser.parse_args()
    before = args.before or git("merge-base", "HEAD", "main", cwd=ROOT).strip()
    with tempfile.TemporaryDirectory(prefix="bench-jobs-") as tmp_name:
        tmp = Path(tmp_name)
        projects = {
            "before": render(tmp / "before" / PACKAGE, ANSWERS, vcs_ref=before),
            "after": render(tmp / "after" / PACKAGE, ANSWERS),
        }
        for project in projects.values():
            sync(project)
        figures: dict[str, list[float]] = {"before": [], "after": []}
        for n in range(args.runs):
            for design, project in projects.items():
                seconds = measure(project, design, args.jobs, args.workers, tmp)
                rate = args.jobs / seconds
                figures[design].append(rate)
                print(
                    f"run {n + 1} {design:6}: {args.jobs} jobs, {seconds:.2f} s, {rate:.0f} jobs/s"
                )
        medians = {design: round(statistics.median(rates)) for design, rates in figures.items()}
        print(
            f"median jobs/s with {args.workers} worker processes: before {medians['before']},"
            f" after {medians['after']} ({medians['after'] / medians['before']:.2f}x)"
        )
        print(json.dumps({"jobs": args.jobs, "workers": args.workers, "jobs_per_second": medians}))


if __name__ == "__main__":
    sys.exit(main())
