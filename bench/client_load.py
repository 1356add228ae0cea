"""The rendered app's HTTP client alone, for ``upstream.py``: how fast can it call upstream?

    <project>/.venv/bin/python bench/client_load.py PACKAGE [--concurrency 64] [--duration 5]
                                                           [--warmup 3]

Run with a rendered project's Python and settings in the environment: builds the client
exactly as the app does (``create_http_client(Settings())`` of
``PACKAGE.features.http_client.client``) on uvloop, as uvicorn runs the app, and keeps
``--concurrency`` tasks calling ``GET /things`` on the upstream for ``--duration`` seconds
(after ``--warmup`` seconds, discarded). Prints one JSON line: requests per second, the
process's CPU milliseconds per request, errors.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time
from collections.abc import Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--path", default="/things")
    return parser.parse_args(argv)


async def hammer(client: Any, path: str, concurrency: int, seconds: float) -> tuple[int, int]:
    """``concurrency`` tasks calling ``path`` until ``seconds`` have passed: (done, errors)."""
    deadline = time.monotonic() + seconds
    done = errors = 0

    async def worker() -> None:
        nonlocal done, errors
        while time.monotonic() < deadline:
            try:
                response = await client.get(path)
                response.json()
            except Exception:  # any failure counts; the run goes on
                errors += 1
            else:
                done += 1 if response.status_code == 200 else 0
                errors += 0 if response.status_code == 200 else 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, errors


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    try:
        http = importlib.import_module(f"{args.package}.features.http_client.client")
    except ImportError:  # before 0.9.0
        http = importlib.import_module(f"{args.package}.http")
    settings = importlib.import_module(f"{args.package}.settings").Settings()
    async with http.create_http_client(settings) as client:
        await hammer(client, args.path, args.concurrency, args.warmup)
        cpu, wall = time.process_time(), time.perf_counter()
        done, errors = await hammer(client, args.path, args.concurrency, args.duration)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "client": f"{http.httpx.__name__} {http.httpx.__version__}",
        "concurrency": args.concurrency,
        "rps": round(done / wall, 1),
        "cpu_ms_per_request": round(1000 * cpu / max(done, 1), 3),
        "cpu_pct": round(100 * cpu / wall),
        "errors": errors,
    }


def main() -> None:
    args = parse_args()
    import uvloop  # the rendered project's Python has it (uvicorn[standard])

    print(json.dumps(uvloop.run(measure(args))), flush=True)


if __name__ == "__main__":
    main()
