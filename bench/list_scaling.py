"""List pages at 10,000 and at 1,000,000 rows: ``GET /items?limit=10&cursor=...``, as shipped.

    .venv/bin/python bench/list_scaling.py [--backends sqlite,postgresql,mysql] [--rows 1000000]
                                           [--duration 10] [--connections 64] [--runs 3]

Per backend: render the project with the template's default answers (all features),
``uv sync``, create and migrate two databases and fill them server-side (``_dbtool.py
fill``: ``generate_series`` on PostgreSQL, a cross join of digits on MySQL/MariaDB, a
recursive CTE on SQLite; ids 1..N) with 10,000 and with ``--rows`` items. The package's own
``pagination.encode_cursor(id)`` (run with the project's Python) gives 2,000 cursors at
random ids across each table; ``random_paths.lua`` sends each request with one of them.

Each run serves the app as shipped on each database in turn (the order alternates between
runs), checks the answers (the first page is ids 1..10; the page of the cursor of id k
starts at k+1), and loads it with wrk, a 3 s warm-up each: random cursor pages, then the
first page without a cursor (for reference, no target). The ratio p50 at --rows / p50 at
10,000 is taken within each run; the medians over the runs are reported next to the target
(<= 1.5). Ends with every figure as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
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
    fill_items,
    for_each_backend,
    load,
    main_with_cleanup,
    probe,
    ranged,
    rendered_project,
    repeat,
    run_bench,
    serve_app,
    temp_database,
    write_suffixes,
)

from harness import http_get

BACKENDS = ("sqlite", "postgresql", "mysql")
DATA = {"project_name": "Bench Service"}  # every other answer: the template's default
SMALL_ROWS = 10_000
LARGE_ROWS = 1_000_000
LIMIT = 10
PATH = f"/items?limit={LIMIT}"
CURSORS = 2_000
MAX_P50_RATIO = 1.5  # p50 at --rows over p50 at 10,000 rows
TIMEOUT = "30s"  # wrk's per-request timeout: a slow page is a figure, not a dropped request
# Prints "<id> &cursor=<cursor>" lines: the cursor of the page after item <id>, for random
# ids in 1..last, URL-encoded for the query string.
CURSOR_CODE = """
import random, sys, urllib.parse
from {package}.pagination import encode_cursor
count, last, seed = (int(arg) for arg in sys.argv[1:])
rng = random.Random(seed)
for _ in range(count):
    key = rng.randint(1, last)
    print(key, "&cursor=" + urllib.parse.quote(encode_cursor(key), safe=""))
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), type=comma_choices(BACKENDS))
    parser.add_argument(
        "--rows", default=LARGE_ROWS, type=int, help="items in the large table (> 10,000)"
    )
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    if args.rows <= SMALL_ROWS:
        parser.error(f"--rows must be more than {SMALL_ROWS}")
    return args


@dataclass(frozen=True)
class Table:
    """One filled database and the cursors into it."""

    rows: int
    url: str
    cursors: Path  # "&cursor=..." a line, for load(..., suffixes=)
    sample: tuple[int, str]  # an id and the "&cursor=..." of the page after it
    fill_seconds: float


def make_cursors(project: Project, rows: int, path: Path) -> tuple[int, str]:
    """Write ``CURSORS`` cursors at random ids to ``path``; returns one (id, parameter)."""
    code = CURSOR_CODE.format(package=project.package)
    lines = probe(project, code, args=[str(CURSORS), str(rows - LIMIT), str(rows)]).splitlines()
    pairs = [line.split(" ", 1) for line in lines]
    write_suffixes(path, (param for _, param in pairs))
    return int(pairs[0][0]), pairs[0][1]


def prepare(project: Project, url: str, rows: int) -> Table:
    alembic_upgrade(project, url)
    started = time.perf_counter()
    print(f"   {fill_items(project, url, rows)}", flush=True)
    seconds = time.perf_counter() - started
    cursors = project.path.parent / f"cursors-{rows}.txt"
    sample = make_cursors(project, rows, cursors)
    return Table(rows, url, cursors, sample, round(seconds, 1))


# --- one run --------------------------------------------------------------------------------


def page_ids(base: str, query: str) -> list[int]:
    """The item ids of ``PATH`` plus ``query``; BenchError unless a page with a cursor field."""
    status, body = http_get(base + PATH + query)
    if status != 200:
        raise BenchError(f"GET {PATH}{query} answered {status}: {body[:300]!r}")
    page = json.loads(body)
    if not isinstance(page, dict) or "next_cursor" not in page:
        raise BenchError(f"GET {PATH}{query}: no keyset page: {body[:300]!r}")
    return [int(item["id"]) for item in page["items"]]


def check_pages(base: str, table: Table) -> None:
    """The first page is ids 1..LIMIT; the cursor of id k gives k+1..k+LIMIT."""
    first = page_ids(base, "")
    key, param = table.sample
    after = page_ids(base, param)
    expected_first = list(range(1, LIMIT + 1))
    expected_after = list(range(key + 1, key + LIMIT + 1))
    if first != expected_first or after != expected_after:
        raise BenchError(
            f"{table.rows} rows: first page {first} (expected {expected_first}); "
            f"after id {key}: {after} (expected {expected_after})"
        )


def measure(project: Project, table: Table, args: argparse.Namespace) -> Figures:
    with serve_app(project, table.url) as app:
        check_pages(app.url, table)
        pages = load(app.url + PATH, args, suffixes=table.cursors, timeout=TIMEOUT)
        first = load(app.url + PATH, args, timeout=TIMEOUT)
    return {"cursor": pages.figures(), "first_page": first.figures()}


def p50_ratio(large: Mapping[str, Any], small: Mapping[str, Any]) -> float | None:
    """p50 large / p50 small; None unless both loads completed requests."""
    if not (large["requests"] and small["requests"]):
        return None
    return round(large["p50_ms"] / small["p50_ms"], 3)


def one_run(
    project: Project, tables: Sequence[Table], number: int, args: argparse.Namespace
) -> Figures:
    order = tables if number % 2 else list(reversed(tables))
    figures: dict[str, Figures] = {}
    for table in order:
        print(f"   {table.rows:,} rows: random cursor pages, then the first page", flush=True)
        figures[str(table.rows)] = measure(project, table, args)
        print(f"   {json.dumps(figures[str(table.rows)])}", flush=True)
    small, large = figures[str(SMALL_ROWS)], figures[str(args.rows)]
    return {
        "small": small,
        "large": large,
        "p50_ratio": p50_ratio(large["cursor"], small["cursor"]),
        "first_page_p50_ratio": p50_ratio(large["first_page"], small["first_page"]),
    }


# --- per backend ----------------------------------------------------------------------------


def bench_backend(backend: str, args: argparse.Namespace) -> Figures:
    print(f"== {backend}: render, uv sync", flush=True)
    data = {**DATA, "database": backend}
    with (
        rendered_project(data, prefix=f"bench-list-{backend}-") as project,
        temp_database(project, project.path.parent, "bench_list_small") as small_url,
        temp_database(project, project.path.parent, "bench_list_large") as large_url,
    ):
        print(f"   migrate and fill {small_url} ({SMALL_ROWS:,} items)", flush=True)
        small = prepare(project, small_url, SMALL_ROWS)
        print(f"   migrate and fill {large_url} ({args.rows:,} items)", flush=True)
        large = prepare(project, large_url, args.rows)
        result = repeat(args.runs, lambda number: one_run(project, [small, large], number, args))
    errors = sum(
        run[size][kind]["errors"]
        for run in result["runs"]
        for size in ("small", "large")
        for kind in ("cursor", "first_page")
    )
    p50_ratio = result["median"]["p50_ratio"]
    return result | {
        "fill_seconds": {"small": small.fill_seconds, "large": large.fill_seconds},
        "errors_total": errors,
        "checks": {
            "p50_ratio_ok": p50_ratio is not None and p50_ratio <= MAX_P50_RATIO,
            "no_errors": errors == 0,
        },
    }


# --- report ---------------------------------------------------------------------------------


def print_table(backend: str, result: Mapping[str, Any], args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    print(
        f"\n{backend}: as shipped; GET {PATH}, wrk {args.connections} connections x {THREADS} "
        f"threads, {args.duration} s after {WARMUP_SECONDS:g} s; median of {args.runs} "
        "run(s) [range]"
    )
    print(f"  {'':40}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for kind, what in (("cursor", "random cursor pages"), ("first_page", "first page (ref.)")):
        for size, rows in (("small", SMALL_ROWS), ("large", args.rows)):
            row = median[size][kind]
            print(
                f"  {f'{rows:,} rows, {what}':40}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}"
                f"{row['p99_ms']:>10.2f}{row['errors']:>8}"
            )
    label = f"p50 {args.rows:,} / {SMALL_ROWS:,} rows"
    target = f"<= {MAX_P50_RATIO:g}"
    print(check_line(label, ranged(result, "p50_ratio", digits=2), target, checks["p50_ratio_ok"]))
    first = ranged(result, "first_page_p50_ratio", digits=2)
    print(f"  {'first page, the same ratio':<30}{first:>22}   (reference, no target)")
    errors = str(result["errors_total"])
    print(check_line("errors (all loads, all runs)", errors, "0", checks["no_errors"]))
    fill = result["fill_seconds"]
    print(f"  filled server-side: {args.rows:,} items in {fill['large']} s", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()

    def measure() -> Figures:
        return for_each_backend(
            args.backends,
            lambda backend: bench_backend(backend, args),
            lambda backend, result: print_table(backend, result, args),
        )

    extra = {"rows": {"small": SMALL_ROWS, "large": args.rows}, "limit": LIMIT}
    targets = {"max_p50_ratio": MAX_P50_RATIO}
    return run_bench("list_scaling", args, measure, targets=targets, extra=extra)


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, databases and temp dirs removed")
