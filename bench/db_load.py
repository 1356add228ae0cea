"""Database read load: the rendered app's ``GET /items/{id}`` against a raw-driver baseline.

    .venv/bin/python bench/db_load.py [--backends sqlite,postgresql,mysql] [--duration 10]
                                      [--connections 64] [--pool-size 64]

Per backend: render the template (no features), ``uv sync``, create and migrate a database,
seed 10,000 items, then load the rendered app and ``raw_app.py`` (same Python, FastAPI and
uvicorn; the driver without SQLAlchemy) with wrk: random ids, a 3 s warm-up, then the
measured run. Prints a table per backend and, as the last line, every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    BenchError,
    Project,
    WrkResult,
    alembic_upgrade,
    comma_choices,
    ensure_wrk,
    free_port,
    http_get,
    interrupt_on_sigterm,
    main_with_cleanup,
    rendered_project,
    seed_items,
    serve,
    temp_database,
    tool_env,
    wrk,
)

BACKENDS = ("sqlite", "postgresql", "mysql")
DATA = {"features": [], "project_name": "Bench Service"}
ROWS = 10_000
DATABASE_NAME = "bench_db_load"
SCRIPT = BENCH / "random_ids.lua"
RAW_APP = BENCH / "raw_app.py"
WARMUP_SECONDS = 3
THREADS = 2
# SQLite has no pool settings in the template: SQLAlchemy's default for an aiosqlite file is
# a queue pool of 5 (+10 overflow), so the raw baseline keeps 15 connections.
SQLITE_POOL = 15
POOL_TIMEOUT_SECONDS = 30


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), type=comma_choices(BACKENDS))
    parser.add_argument("--duration", default=10, type=int, help="measured seconds per run")
    parser.add_argument("--connections", default=64, type=int, help="wrk connections")
    parser.add_argument(
        "--pool-size", default=64, type=int, help="database connections per app (PG/MySQL)"
    )
    return parser.parse_args(argv)


def pool_size(backend: str, args: argparse.Namespace) -> int:
    return SQLITE_POOL if backend == "sqlite" else int(args.pool_size)


def rendered_env(project: Project, url: str, port: int, pool: int) -> dict[str, str]:
    pool_settings = {}
    if project.answers["database"] != "sqlite":
        pool_settings = {
            "DATABASE_POOL_SIZE": str(pool),
            "DATABASE_MAX_OVERFLOW": "0",
            "DATABASE_POOL_TIMEOUT": str(POOL_TIMEOUT_SECONDS),
        }
    return project.serving_env(url, port, **pool_settings)


def raw_env(url: str, port: int, pool: int) -> dict[str, str]:
    return tool_env(
        {
            "RAW_DATABASE_URL": url,
            "RAW_POOL_SIZE": str(pool),
            "RAW_HOST": "127.0.0.1",
            "RAW_PORT": str(port),
            "RAW_LOG_LEVEL": "warning",
        }
    )


def sample(base: str) -> dict[str, Any]:
    """What the server answers for an existing and a missing id (compared across apps)."""
    status, body = http_get(f"{base}/items/1")
    missing, _ = http_get(f"{base}/items/{ROWS + 1}")
    try:
        item = json.loads(body)
    except ValueError:
        item = body.decode(errors="replace")
    return {"status": status, "item": item, "missing_status": missing}


def measure(
    cmd: Sequence[str | Path],
    env: Mapping[str, str],
    port: int,
    cwd: Path,
    args: argparse.Namespace,
) -> tuple[WrkResult, dict[str, Any]]:
    """Serve, sample the answers, warm up and load; the server is stopped on return."""
    with serve(cmd, env, port, cwd=cwd) as base:
        answers = sample(base)
        result = wrk(
            f"{base}/items/1",  # the script picks the path
            duration=args.duration,
            connections=args.connections,
            threads=THREADS,
            script=SCRIPT,
            warmup=WARMUP_SECONDS,
        )
    return result, answers


def compare(rendered: dict[str, Any], raw: dict[str, Any]) -> None:
    if rendered == raw:
        print("  check: both apps answer /items/1 and a missing id identically", flush=True)
    else:
        print(f"  warning: answers differ\n    rendered {rendered}\n    raw      {raw}", flush=True)


def figures(rendered: WrkResult, raw: WrkResult, pool: int) -> dict[str, Any]:
    return {
        "rendered_rps": round(rendered.rps, 1),
        "raw_rps": round(raw.rps, 1),
        "ratio": round(rendered.rps / raw.rps, 3) if raw.rps else None,
        "rendered_p50_ms": round(rendered.p50_ms, 2),
        "rendered_p99_ms": round(rendered.p99_ms, 2),
        "raw_p50_ms": round(raw.p50_ms, 2),
        "raw_p99_ms": round(raw.p99_ms, 2),
        "errors": rendered.errors + raw.errors,
        "rendered_errors": rendered.errors,
        "raw_errors": raw.errors,
        "rendered_requests": rendered.requests,
        "raw_requests": raw.requests,
        "pool_size": pool,
    }


def load_both(
    project: Project, url: str, pool: int, args: argparse.Namespace
) -> tuple[WrkResult, WrkResult]:
    """Load the rendered app, then the raw baseline (one at a time: they share the cores)."""
    timing = f"{args.duration} s after a {WARMUP_SECONDS} s warm-up"
    print(f"   load the rendered app ({timing})", flush=True)
    port = free_port()
    env = rendered_env(project, url, port, pool)
    cmd = [project.python, "-m", project.package]
    rendered, rendered_answers = measure(cmd, env, port, project.path, args)
    print(f"   load the raw baseline ({timing})", flush=True)
    port = free_port()
    raw, raw_answers = measure(
        [project.python, RAW_APP], raw_env(url, port, pool), port, project.path, args
    )
    compare(rendered_answers, raw_answers)
    return rendered, raw


def bench_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    pool = pool_size(backend, args)
    print(f"== {backend}: render, uv sync", flush=True)
    data = {**DATA, "database": backend}
    with (
        rendered_project(data, prefix=f"bench-db-load-{backend}-") as project,
        temp_database(project, project.path.parent, DATABASE_NAME) as url,
    ):
        print(f"   migrate and seed {url}", flush=True)
        alembic_upgrade(project, url)
        print(f"   {seed_items(project, url, ROWS)}", flush=True)
        rendered, raw = load_both(project, url, pool, args)
    return figures(rendered, raw, pool)


def print_table(backend: str, result: Mapping[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{backend}: pool {result['pool_size']}, wrk {args.connections} connections "
        f"x {THREADS} threads, {args.duration} s"
    )
    print(f"  {'':10}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for side in ("rendered", "raw"):
        print(
            f"  {side:10}{result[f'{side}_rps']:>10.1f}{result[f'{side}_p50_ms']:>10.2f}"
            f"{result[f'{side}_p99_ms']:>10.2f}{result[f'{side}_errors']:>8}"
        )
    print(f"  ratio rendered/raw: {result['ratio']}\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    ensure_wrk()
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load} (server and wrk share them)", flush=True)
    results: dict[str, Any] = {}
    for backend in args.backends:
        try:
            results[backend] = bench_backend(backend, args)
        except BenchError as exc:
            print(f"!! {backend} failed: {exc}", file=sys.stderr, flush=True)
            results[backend] = {"error": str(exc).splitlines()[0]}
            continue
        print_table(backend, results[backend], args)
    print(json.dumps({"db_load": results}))
    return 1 if any("error" in result for result in results.values()) else 0


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, databases and temp dirs removed")
