"""What the ``observability`` feature costs on ``GET /items/{id}``: on (as shipped) vs off.

    .venv/bin/python bench/observability.py [--backends sqlite,postgresql] [--duration 10]
                                            [--connections 64] [--runs 3]

Per backend: render the template twice with its default answers, once as shipped (every
feature, ``observability`` included) and once without ``observability``; ``uv sync`` both;
create, migrate and seed (10,000 items) a database for each. Each run then loads
``GET /items/{id}`` (random ids; a 3 s warm-up each) on, one after the other (the order
alternating between runs):

- ``off``: the render without the feature;
- ``on``: the render as shipped (metrics; no OTLP endpoint, so no traces: the default);
- ``traced``: the same render with ``OTLP_ENDPOINT`` set to a sink on loopback in this
  process that answers every export with 200 (every request traced and its spans sent).

Per run: req/s and p99 of each, the cost ``1 - on / off`` (target <= 0.10) and the traced
cost ``1 - traced / off`` (reported). After each ``on`` load the bench scrapes ``/metrics``
and checks that the app counted at least the requests wrk did, and after ``traced`` that
the sink received spans, so that neither can measure an app that does nothing. Ends with
every figure as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import (
    RANDOM_PATHS,
    THREADS,
    WARMUP_SECONDS,
    BenchError,
    Figures,
    Project,
    add_load_arguments,
    alembic_upgrade,
    check_line,
    comma_choices,
    ensure_wrk,
    for_each_backend,
    main_with_cleanup,
    proc_cpu_seconds,
    ranged,
    rendered_project,
    repeat,
    run_bench,
    seed_items,
    serve_app,
    temp_database,
    write_suffixes,
    wrk,
)

from harness import DEFAULT_FEATURES, http_get

BACKENDS = ("sqlite", "postgresql", "mysql")
DATA = {"project_name": "Bench Service"}
ROWS = 10_000
MAX_COST = 0.10  # 1 - req/s on / req/s off
ROUTE_COUNT = re.compile(
    r'^http_request_duration_seconds_count\{method="GET",route="/items/\{item_id\}",'
    r'status="200"\} (\S+)$',
    re.MULTILINE,
)
MODES = ("off", "on", "traced")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite", type=comma_choices(BACKENDS))
    add_load_arguments(parser)
    return parser.parse_args(argv)


class Sink:
    """An OTLP/HTTP endpoint on loopback that accepts and counts exports."""

    def __init__(self) -> None:
        sink = self
        self.exports = 0
        self.bytes = 0

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                self.rfile.read(length)
                sink.exports += 1
                sink.bytes += length
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextlib.contextmanager
    def running(self) -> Iterator[Sink]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@dataclass(frozen=True)
class Setup:
    on: Project
    on_url: str
    off: Project
    off_url: str
    ids: Path
    sink: Sink


def counted(base: str) -> float:
    """The app's own count of 200s on ``GET /items/{item_id}``."""
    status, body = http_get(f"{base}/metrics")
    if status != 200:
        raise BenchError(f"GET /metrics answered {status}")
    match = ROUTE_COUNT.search(body.decode())
    return float(match.group(1)) if match else 0.0


def measure(setup: Setup, mode: str, args: argparse.Namespace) -> Figures:
    project, url = (setup.off, setup.off_url) if mode == "off" else (setup.on, setup.on_url)
    settings = {"OTLP_ENDPOINT": setup.sink.url} if mode == "traced" else {}
    exports_before = setup.sink.exports
    with serve_app(project, url, **settings) as app:
        status, body = http_get(f"{app.url}/items/1")
        if status != 200:
            raise BenchError(f"GET /items/1 answered {status}: {body[:300]!r}")
        options = {
            "connections": args.connections,
            "threads": THREADS,
            "script": RANDOM_PATHS,
            "script_args": [str(setup.ids)],
        }
        wrk(f"{app.url}/items/", duration=WARMUP_SECONDS, **options)
        before = counted(app.url) if mode != "off" else 0.0
        cpu = proc_cpu_seconds(app.pid)
        result = wrk(f"{app.url}/items/", duration=args.duration, **options)
        cpu = proc_cpu_seconds(app.pid) - cpu
        figures = result.figures()
        # The server's CPU time per request: what bounds req/s on a saturated core, and less
        # disturbed than req/s by other work on a shared machine.
        figures["cpu_us"] = round(cpu / result.requests * 1e6, 1) if result.requests else None
        if mode != "off":
            figures["app_counted"] = int(counted(app.url) - before)
            figures["counts_ok"] = figures["app_counted"] >= result.requests
    if mode == "traced":
        figures["exports"] = setup.sink.exports - exports_before
        figures["exports_ok"] = figures["exports"] > 0
    return figures


def one_run(setup: Setup, number: int, args: argparse.Namespace) -> Figures:
    order = MODES if number % 2 else tuple(reversed(MODES))
    figures: Figures = {}
    for mode in order:
        print(f"   {mode}", flush=True)
        figures[mode] = measure(setup, mode, args)
        print(f"   {json.dumps(figures[mode])}", flush=True)
    off, off_cpu = figures["off"]["rps"], figures["off"]["cpu_us"]

    def cpu_cost(mode: str) -> float | None:
        """1 - req/s a saturated core would serve with the feature / without."""
        used = figures[mode]["cpu_us"]
        return round(1 - off_cpu / used, 3) if used and off_cpu else None

    return figures | {
        "cost": round(1 - figures["on"]["rps"] / off, 3) if off else None,
        "traced_cost": round(1 - figures["traced"]["rps"] / off, 3) if off else None,
        "cpu_cost": cpu_cost("on"),
        "traced_cpu_cost": cpu_cost("traced"),
    }


def bench_backend(backend: str, args: argparse.Namespace) -> Figures:
    print(f"== {backend}: render with and without observability, uv sync", flush=True)
    on_data = {**DATA, "database": backend}
    off_data = on_data | {"features": [f for f in DEFAULT_FEATURES if f != "observability"]}
    with (
        rendered_project(on_data, prefix=f"bench-obs-on-{backend}-") as on,
        rendered_project(off_data, prefix=f"bench-obs-off-{backend}-") as off,
        temp_database(on, on.path.parent, "bench_obs_on") as on_url,
        temp_database(off, off.path.parent, "bench_obs_off") as off_url,
        Sink().running() as sink,
    ):
        if "observability" not in on.answers["features"]:
            raise BenchError("the default answers no longer include observability")
        for project, url in ((on, on_url), (off, off_url)):
            alembic_upgrade(project, url)
            print(f"   {seed_items(project, url, ROWS)}", flush=True)
        ids = write_suffixes(on.path.parent / "ids.txt", map(str, range(1, ROWS + 1)))
        setup = Setup(on, on_url, off, off_url, ids, sink)
        result = repeat(args.runs, lambda number: one_run(setup, number, args))
    median = result["median"]
    runs = result["runs"]
    return result | {
        "checks": {
            "cost_ok": median["cost"] is not None and median["cost"] <= MAX_COST,
            "cpu_ok": median["cpu_cost"] is not None and median["cpu_cost"] <= MAX_COST,
            "counts_ok": all(run[m]["counts_ok"] for run in runs for m in ("on", "traced")),
            "exports_ok": all(run["traced"]["exports_ok"] for run in runs),
            "no_errors": all(run[m]["errors"] == 0 for run in runs for m in MODES),
        }
    }


def print_table(backend: str, result: Figures, args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    print(
        f"\n{backend}: GET /items/{{id}}, wrk {args.connections} connections x {THREADS} "
        f"threads, {args.duration} s after {WARMUP_SECONDS:g} s; median of {args.runs} "
        "run(s) [range]"
    )
    print(f"  {'':36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU us':>8}{'errors':>8}")
    labels = {
        "off": "observability off",
        "on": "on, as shipped (metrics)",
        "traced": "on, traces sent (OTLP_ENDPOINT)",
    }
    for mode in MODES:
        row = median[mode]
        print(
            f"  {labels[mode]:36}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}"
            f"{row['p99_ms']:>10.2f}{row['cpu_us']:>8.0f}{row['errors']:>8}"
        )
    cost = ranged(result, "cost")
    print(check_line("cost, as shipped", cost, f"<= {MAX_COST:.2f}", checks["cost_ok"]))
    cpu = ranged(result, "cpu_cost")
    print(check_line("CPU per request cost, shipped", cpu, f"<= {MAX_COST:.2f}", checks["cpu_ok"]))
    traced = ranged(result, "traced_cost")
    print(check_line("cost, traces sent", traced, "(reported)", True))
    traced_cpu = ranged(result, "traced_cpu_cost")
    print(check_line("CPU cost, traces sent", traced_cpu, "(reported)", True))
    print(check_line("app counted wrk's requests", "", "every run", checks["counts_ok"]))
    print(check_line("spans reached the sink", "", "every run", checks["exports_ok"]))
    print(check_line("errors", "", "0", checks["no_errors"]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()

    def failed(result: Figures) -> bool:
        backends = result["backends"].values()
        return any(
            "error" in figures
            or not (figures["checks"]["counts_ok"] and figures["checks"]["exports_ok"])
            for figures in backends
        )

    return run_bench(
        "observability",
        args,
        lambda: for_each_backend(
            args.backends,
            lambda backend: bench_backend(backend, args),
            lambda backend, result: print_table(backend, result, args),
        ),
        targets={"max_cost": MAX_COST},
        failed=failed,
    )


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, databases and temp dirs removed")
