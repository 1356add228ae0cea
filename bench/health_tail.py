"""The tail latency of ``GET /health/live``, with the JSON access line on (as shipped) and off.

    .venv/bin/python bench/health_tail.py [--duration 10] [--connections 64] [--runs 3]

Renders the project with the template's default answers (SQLite, all features), migrates a
database, then each run serves it twice, one after the other (the order alternates between
runs): as shipped (log level info, so one JSON access line per request, written to the
server's log file) and with ``LOG_LEVEL=warning`` (no access line). Each is loaded with wrk
on ``/health/live`` (a 3 s warm-up, then the measured run). Per run: req/s, p50, p99,
p99/p50 and the access line's cost, 1 - req/s on / req/s off; the medians over the runs are
reported, each next to its target: p99 <= 2.5x p50 (as shipped), cost <= 10 %.

The server logs are checked too, so that this cannot silently measure an app that does not
log: with info, the measured run must have written one JSON access line (with a
``request_id``) per request wrk counted (give or take the requests in flight at the end);
with warning, none. Ends with every figure as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    QUIET_LOGS,
    THREADS,
    WARMUP_SECONDS,
    BenchError,
    Figures,
    Project,
    add_load_arguments,
    alembic_upgrade,
    check_line,
    ensure_wrk,
    main_with_cleanup,
    ranged,
    rendered_project,
    repeat,
    run_bench,
    serve_app,
    temp_database,
    wrk,
)

from harness import http_get

DATA = {"project_name": "Bench Service", "database": "sqlite"}  # features: the default (all)
PATH = "/health/live"
MAX_TAIL_RATIO = 2.5  # p99 / p50, as shipped
MAX_ACCESS_COST = 0.10  # 1 - req/s with the access line / req/s without
# Access lines may exceed wrk's count by the requests in flight when it stops (one per
# connection) and a little more; fewer lines than requests means lines are missing.
LINE_SLACK = 0.02
MODES = {"on": {}, "off": QUIET_LOGS}  # the access line: as shipped / LOG_LEVEL=warning


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    return parser.parse_args(argv)


def access_lines(log: Path, offset: int) -> list[dict[str, Any]]:
    """The JSON access lines for ``PATH`` written to ``log`` after byte ``offset``."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    lines = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("path") == PATH:
            lines.append(record)
    return lines


def check_lines(mode: str, lines: Sequence[Mapping[str, Any]], requests: int, slack: int) -> bool:
    """On: a line with a request id for each request wrk counted; off: no line at all."""
    if mode == "off":
        return not lines
    with_id = [line for line in lines if str(line.get("request_id", "-")) not in ("", "-")]
    return len(with_id) == len(lines) and requests <= len(lines) <= requests + slack


def measure(
    project: Project, url: str, mode: str, args: argparse.Namespace
) -> tuple[Figures, dict[str, Any] | None]:
    """Serve in ``mode``, warm up, take the log's offset, load: figures, an access line."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-health-log-") as tmp,
        serve_app(project, url, log=Path(tmp) / "server.log", **MODES[mode]) as app,
    ):
        log = Path(tmp) / "server.log"
        status, body = http_get(app.url + PATH)
        if status != 200:
            raise BenchError(f"GET {PATH} answered {status}: {body[:300]!r}")
        options = {"connections": args.connections, "threads": THREADS}
        wrk(app.url + PATH, duration=WARMUP_SECONDS, **options)
        offset = log.stat().st_size
        result = wrk(app.url + PATH, duration=args.duration, **options)
        lines = access_lines(log, offset)
    slack = args.connections + int(LINE_SLACK * result.requests)
    figures = result.figures() | {
        "tail_ratio": round(result.p99_ms / result.p50_ms, 3) if result.p50_ms else None,
        "access_lines": len(lines),
        "log_ok": check_lines(mode, lines, result.requests, slack),
    }
    return figures, lines[0] if lines else None


def one_run(project: Project, url: str, number: int, args: argparse.Namespace) -> Figures:
    order = ("on", "off") if number % 2 else ("off", "on")
    figures: Figures = {}
    for mode in order:
        print(f"   access line {mode}", flush=True)
        figures[mode], line = measure(project, url, mode, args)
        print(f"   {json.dumps(figures[mode])}", flush=True)
        if line is not None and number == 1:
            print(f"   a line of the server's log: {json.dumps(line)}", flush=True)
    on, off = figures["on"]["rps"], figures["off"]["rps"]
    return figures | {"access_cost": round(1 - on / off, 3) if off else None}


def bench(args: argparse.Namespace) -> Figures:
    print("== render (defaults: sqlite, all features), uv sync", flush=True)
    with (
        rendered_project(DATA, prefix="bench-health-") as project,
        temp_database(project, project.path.parent, "bench_health") as url,
    ):
        alembic_upgrade(project, url)
        result = repeat(args.runs, lambda number: one_run(project, url, number, args))
    median = result["median"]
    return result | {
        "checks": {
            "tail_ok": (median["on"]["tail_ratio"] or 0) <= MAX_TAIL_RATIO,
            "access_cost_ok": (median["access_cost"] or 0) <= MAX_ACCESS_COST,
            "log_ok": median["on"]["log_ok"] and median["off"]["log_ok"],
            "no_errors": all(run[m]["errors"] == 0 for run in result["runs"] for m in MODES),
        }
    }


def print_table(result: Figures, args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    print(
        f"\nGET {PATH}: wrk {args.connections} connections x {THREADS} threads, "
        f"{args.duration} s after {WARMUP_SECONDS:g} s; median of {args.runs} run(s) [range]"
    )
    print(f"  {'':28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99/p50':>9}{'lines':>10}")
    for mode, label in (("on", "access line on (shipped)"), ("off", "access line off")):
        row = median[mode]
        print(
            f"  {label:28}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['tail_ratio']:>9.2f}{row['access_lines']:>10}"
        )
    tail = ranged(result, "on", "tail_ratio", digits=2)
    print(check_line("p99 / p50 (as shipped)", tail, f"<= {MAX_TAIL_RATIO:g}", checks["tail_ok"]))
    cost = ranged(result, "access_cost")
    target = f"<= {MAX_ACCESS_COST:.2f}"
    print(check_line("access line cost", cost, target, checks["access_cost_ok"]))
    lines = f"{median['on']['access_lines']} / {median['on']['requests']}"
    print(
        check_line("access lines / wrk requests", lines, "1 per request", checks["log_ok"]),
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    return run_bench(
        "health_tail",
        args,
        lambda: bench(args),
        targets={"max_tail_ratio": MAX_TAIL_RATIO, "max_access_cost": MAX_ACCESS_COST},
        report=lambda result: print_table(result, args),
        failed=lambda result: not result["checks"]["log_ok"],
    )


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, temp dirs removed")
