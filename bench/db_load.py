"""Database reads as a user gets the project, against a raw-driver baseline and the last release.

    .venv/bin/python bench/db_load.py [--backends sqlite,postgresql,mysql] [--duration 10]
                                      [--connections 64] [--runs 3]
                                      [--pool-size N] [--log-level LEVEL]   # experiments only

Per backend: render the template at HEAD with its default answers (all features) and the
previous release (the newest ``## X.Y.Z`` of CHANGELOG.md whose commit is not HEAD) from its
commit, ``uv sync`` both, then create, migrate and seed (10,000 items) a database for each.
Each run then loads, one after the other (they share the cores; a 3 s warm-up each; the
order reversed every other run):

- the rendered app as shipped: the project's default settings (its default pool on
  PostgreSQL/MySQL, printed; log level info, so a JSON access line per request), with
  ``GET /items/{id}`` (random ids) and ``GET /items?limit=10``;
- ``raw_app.py`` (same Python, FastAPI and uvicorn; the driver without SQLAlchemy) with as
  many connections as the rendered app can open, ``GET /items/{id}``;
- the previous release as shipped, ``GET /items?limit=10``.

Ratios are taken within each run; the medians over the runs are reported, each figure next
to its target. ``--pool-size`` (pool N, no overflow, for the raw baseline too) and
``--log-level`` serve the HEAD and release apps otherwise, for experiments: the figures are
then marked as not "as shipped". Ends with every figure as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _common import (
    BENCH,
    THREADS,
    WARMUP_SECONDS,
    BenchError,
    Figures,
    Project,
    WrkResult,
    add_load_arguments,
    alembic_upgrade,
    check_line,
    comma_choices,
    ensure_wrk,
    for_each_backend,
    load,
    main_with_cleanup,
    previous_release,
    probe,
    ranged,
    rendered_project,
    repeat,
    run_bench,
    seed_items,
    serve_app,
    temp_database,
    write_suffixes,
)

from harness import free_port, http_get, serve, tool_env

if TYPE_CHECKING:
    from tests.releases import Release

BACKENDS = ("sqlite", "postgresql", "mysql")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
DATA = {"project_name": "Bench Service"}  # every other answer: the template's default
ROWS = 10_000
DATABASE_NAME = "bench_db_load"
RAW_APP = BENCH / "raw_app.py"
LIST_PATH = "/items?limit=10"
# SQLite has no pool settings: the template fixes the pool in db.SQLITE_POOL_SIZE (no overflow).
SQLITE_POOL_PROBE = "from {package}.db import SQLITE_POOL_SIZE; print(SQLITE_POOL_SIZE)"
MIN_RAW_RATIO = 0.40  # rendered req/s over raw req/s
MAX_P99_RATIO = 3.0  # rendered p99 over raw p99
# HEAD's list req/s over the previous release's: no regression. (0.4.0's keyset pages had to
# beat 0.3.1's OFFSET pages by 1.5x; they did 1.35-1.59x, docs/benchmarks.md.)
MIN_LIST_RATIO = 0.9
POOL_PROBE = (
    "import json; from {package}.settings import Settings; s = Settings(); "
    "print(json.dumps([s.database_pool_size, s.database_max_overflow]))"
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS), type=comma_choices(BACKENDS))
    add_load_arguments(parser)
    parser.add_argument(
        "--pool-size",
        type=int,
        help="experiment: pool N, no overflow (PG/MySQL; the raw baseline gets N too)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, help="experiment: the apps' LOG_LEVEL (default info)"
    )
    return parser.parse_args(argv)


def overrides(backend: str, args: argparse.Namespace) -> dict[str, str]:
    """Settings on top of the project's defaults: none unless an experiment asks."""
    settings: dict[str, str] = {}
    if args.pool_size is not None and backend != "sqlite":
        settings |= {"DATABASE_POOL_SIZE": str(args.pool_size), "DATABASE_MAX_OVERFLOW": "0"}
    if args.log_level is not None:
        settings["LOG_LEVEL"] = args.log_level
    return settings


def app_pool(project: Project, url: str, settings: Mapping[str, str]) -> tuple[int, int]:
    """(pool size, max overflow) the rendered app runs with."""
    if project.answers["database"] == "sqlite":
        return int(probe(project, SQLITE_POOL_PROBE.format(package=project.package))), 0
    env = project.env({"DATABASE_URL": url, **settings})
    size, overflow = json.loads(probe(project, POOL_PROBE.format(package=project.package), env))
    return int(size), int(overflow)


# --- one run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every run of one backend serves: both renders, their databases, the settings."""

    head: Project
    head_url: str
    previous: Project
    previous_url: str
    settings: Mapping[str, str]
    raw_connections: int
    ids: Path  # the seeded ids, one a line: each request picks one at random


def sample(base: str) -> dict[str, Any]:
    """What the server answers for an existing and a missing id (compared across apps)."""
    status, body = http_get(f"{base}/items/1")
    missing, _ = http_get(f"{base}/items/{ROWS + 1}")
    try:
        item = json.loads(body)
    except ValueError:
        item = body.decode(errors="replace")
    return {"status": status, "item": item, "missing_status": missing}


def check_list(base: str) -> None:
    status, body = http_get(base + LIST_PATH)
    if status != 200:
        raise BenchError(f"GET {LIST_PATH} answered {status}: {body[:300]!r}")


def load_items(base: str, ids: Path, args: argparse.Namespace) -> WrkResult:
    return load(f"{base}/items/", args, suffixes=ids)  # a random id of the file a request


@contextlib.contextmanager
def serve_raw(project: Project, url: str, connections: int) -> Iterator[str]:
    """``raw_app.py`` with the project's Python (its FastAPI, uvicorn and driver)."""
    port = free_port()
    env = tool_env(
        {
            "RAW_DATABASE_URL": url,
            "RAW_POOL_SIZE": str(connections),
            "RAW_HOST": "127.0.0.1",
            "RAW_PORT": str(port),
            "RAW_LOG_LEVEL": "warning",
        }
    )
    with serve([project.python, RAW_APP], env, port, cwd=project.path) as base:
        yield base


def load_rendered(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    print(f"   rendered app, GET /items/{{id}} and {LIST_PATH}", flush=True)
    with serve_app(setup.head, setup.head_url, **setup.settings) as app:
        answers = sample(app.url)
        check_list(app.url)
        item = load_items(app.url, setup.ids, args)
        return {"answers": answers, "item": item, "list": load(app.url + LIST_PATH, args)}


def load_raw(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    print(f"   raw baseline ({setup.raw_connections} connections), GET /items/{{id}}", flush=True)
    with serve_raw(setup.head, setup.head_url, setup.raw_connections) as base:
        return {"answers": sample(base), "item": load_items(base, setup.ids, args)}


def load_previous(setup: Setup, release: Release, args: argparse.Namespace) -> dict[str, Any]:
    print(f"   release {release.version}, GET {LIST_PATH}", flush=True)
    with serve_app(setup.previous, setup.previous_url, **setup.settings) as app:
        check_list(app.url)
        return {"list": load(app.url + LIST_PATH, args)}


def one_run(setup: Setup, release: Release, number: int, args: argparse.Namespace) -> Figures:
    """Load the three apps one after the other (the order reversed every other run, so
    that no pair is always measured at the same distance); figures and ratios of this run.
    """
    steps = {
        "rendered": lambda: load_rendered(setup, args),
        "raw": lambda: load_raw(setup, args),
        "previous": lambda: load_previous(setup, release, args),
    }
    order = list(steps) if number % 2 else list(reversed(steps))
    done = {name: steps[name]() for name in order}
    rendered, raw = done["rendered"]["item"], done["raw"]["item"]
    head_list, previous_list = done["rendered"]["list"], done["previous"]["list"]
    answers_equal = done["rendered"]["answers"] == done["raw"]["answers"]
    if not answers_equal:
        print(
            f"   warning: answers differ: rendered {done['rendered']['answers']}, raw "
            f"{done['raw']['answers']}"
        )
    figures = {
        "item": {
            "rendered": rendered.figures(),
            "raw": raw.figures(),
            "ratio": round(rendered.rps / raw.rps, 3) if raw.rps else None,
            "p99_ratio": round(rendered.p99_ms / raw.p99_ms, 3) if raw.p99_ms else None,
            "answers_equal": answers_equal,
        },
        "list": {
            "head": head_list.figures(),
            "previous": previous_list.figures(),
            "ratio": round(head_list.rps / previous_list.rps, 3) if previous_list.rps else None,
        },
    }
    print(f"   {json.dumps(figures)}", flush=True)
    return figures


# --- per backend ----------------------------------------------------------------------------


def prepare(project: Project, url: str) -> None:
    alembic_upgrade(project, url)
    print(f"   {seed_items(project, url, ROWS)}", flush=True)


def bench_backend(backend: str, release: Release, args: argparse.Namespace) -> Figures:
    print(f"== {backend}: render HEAD and {release.version}, uv sync", flush=True)
    data = {**DATA, "database": backend}
    prefix = f"bench-db-load-{backend}-"
    with (
        rendered_project(data, prefix=prefix) as head,
        rendered_project(data, prefix=f"{prefix}{release.version}-", ref=release.commit) as prev,
        temp_database(head, head.path.parent, DATABASE_NAME) as head_url,
        temp_database(prev, prev.path.parent, f"{DATABASE_NAME}_previous") as prev_url,
    ):
        print(f"   migrate and seed {head_url} and {prev_url}", flush=True)
        prepare(head, head_url)
        prepare(prev, prev_url)
        settings = overrides(backend, args)
        size, overflow = app_pool(head, head_url, settings)
        ids = write_suffixes(head.path.parent / "ids.txt", map(str, range(1, ROWS + 1)))
        setup = Setup(head, head_url, prev, prev_url, settings, size + overflow, ids)
        result = repeat(args.runs, lambda number: one_run(setup, release, number, args))
    return {"pool_size": size, "max_overflow": overflow, "raw_connections": size + overflow} | (
        result | {"checks": verdicts(result)}
    )


def total_errors(result: Figures) -> int:
    """wrk's errors (socket errors, non-2xx answers) over every load of every run."""
    return sum(
        side["errors"]
        for run in result["runs"]
        for part in (run["item"], run["list"])
        for side in part.values()
        if isinstance(side, dict)
    )


def verdicts(result: Figures) -> dict[str, bool]:
    """Targets met by the medians; no errors in any load of any run."""
    item, listing = result["median"]["item"], result["median"]["list"]
    return {
        "raw_ratio_ok": (item["ratio"] or 0) >= MIN_RAW_RATIO,
        "p99_ratio_ok": item["p99_ratio"] is not None and item["p99_ratio"] <= MAX_P99_RATIO,
        "list_ratio_ok": (listing["ratio"] or 0) >= MIN_LIST_RATIO,
        "no_errors": total_errors(result) == 0,
    }


# --- report ---------------------------------------------------------------------------------


def print_table(
    backend: str, result: Figures, release: Release, args: argparse.Namespace, shipped: bool
) -> None:
    median, checks = result["median"], result["checks"]
    pool = (
        "SQLAlchemy's default pool"
        if backend == "sqlite"
        else f"pool {result['pool_size']} + {result['max_overflow']} overflow"
    )
    how = "as shipped" if shipped else "NOT as shipped (--pool-size/--log-level)"
    print(
        f"\n{backend}: {how}, {pool}; raw baseline {result['raw_connections']} connections; "
        f"wrk {args.connections} connections x {THREADS} threads, {args.duration} s after "
        f"{WARMUP_SECONDS:g} s; median of {args.runs} run(s) [range]"
    )
    print(f"  {'':36}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}")
    rows = [
        ("GET /items/{id}   rendered", median["item"]["rendered"]),
        ("GET /items/{id}   raw driver", median["item"]["raw"]),
        (f"GET {LIST_PATH} HEAD", median["list"]["head"]),
        (f"GET {LIST_PATH} {release.version}", median["list"]["previous"]),
    ]
    for label, row in rows:
        print(
            f"  {label:36}{row['rps']:>10.1f}{row['p50_ms']:>10.2f}{row['p99_ms']:>10.2f}"
            f"{row['errors']:>8}"
        )
    print(
        check_line(
            "rendered / raw req/s",
            ranged(result, "item", "ratio"),
            f">= {MIN_RAW_RATIO:.2f}",
            checks["raw_ratio_ok"],
        )
    )
    print(
        check_line(
            "rendered p99 / raw p99",
            ranged(result, "item", "p99_ratio", digits=2),
            f"<= {MAX_P99_RATIO:g}",
            checks["p99_ratio_ok"],
        )
    )
    print(
        check_line(
            f"list HEAD / {release.version} req/s",
            ranged(result, "list", "ratio", digits=2),
            f">= {MIN_LIST_RATIO:g}",
            checks["list_ratio_ok"],
        )
    )
    errors = str(total_errors(result))
    print(check_line("errors (all loads, all runs)", errors, "0", checks["no_errors"]), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    release = previous_release()
    shipped = args.pool_size is None and args.log_level is None

    def measure() -> Figures:
        print(f"previous release: {release.version} ({release.commit[:12]})", flush=True)
        return for_each_backend(
            args.backends,
            lambda backend: bench_backend(backend, release, args),
            lambda backend, result: print_table(backend, result, release, args, shipped),
        )

    targets = {
        "min_raw_ratio": MIN_RAW_RATIO,
        "max_p99_ratio": MAX_P99_RATIO,
        "min_list_ratio": MIN_LIST_RATIO,
    }
    extra = {"as_shipped": shipped, "previous_release": str(release.version)}
    return run_bench("db_load", args, measure, targets=targets, extra=extra)


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, databases and temp dirs removed")
