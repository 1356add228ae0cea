"""An authenticated read on SQLite against PostgreSQL (``auth`` feature): ``GET /users/me``
p99 at 16 connections, both backends measured in each run.

    uv run python bench/auth_read.py [--seconds 10] [--connections 16] [--runs 3]

Renders the template with every feature, ``auth`` included, once per backend (SQLite and
PostgreSQL; every other answer its default), migrates a fresh database for each and creates
the first superuser with the project's own command (as ``bench/login.py`` does). Each run
serves both apps as shipped (``python -m <pkg>``, log level info) one after the other, in an
order reversed every other run, and loads ``GET /users/me`` with the superuser's token (wrk:
a warm-up, then ``--seconds``). An authenticated read is a JWT check and one primary-key
SELECT in a read session of its own; on SQLite it must not wait for the write lock.

Target (issue 21): SQLite's p99 at most 3x PostgreSQL's, the ratio taken within each run and
its median over the runs reported. Measured, not asserted: the exit status is 1 only if an
answer was not a 2xx or a load had errors. Ends with every figure as one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from _common import (
    Figures,
    Project,
    add_runs_argument,
    alembic_upgrade,
    check_line,
    ensure_wrk,
    main_with_cleanup,
    rendered_project,
    repeat,
    report_load,
    run_bench,
    serve_app,
    temp_database,
)
from login import (
    DATA,
    FAILURE_LIMITS,
    WRK_SCRIPT,
    Target,
    connection_counts,
    create_superuser,
    load,
    ratio,
    sign_in,
)

BACKENDS = ("sqlite", "postgresql")
DATABASE_NAME = "bench_auth_read"
TARGET_RATIO = 3.0


@contextlib.contextmanager
def prepared(backend: str, workdir: Path) -> Iterator[tuple[Project, str]]:
    """A render on ``backend``, its migrated database and the first superuser."""
    print(f"== render ({backend}, every feature with auth), uv sync, migrate", flush=True)
    with (
        rendered_project({**DATA, "database": backend}, prefix=f"bench-auth-{backend}-") as project,
        temp_database(project, workdir, DATABASE_NAME) as url,
    ):
        alembic_upgrade(project, url)
        create_superuser(project, url)
        yield project, url


def measure(
    backend: str,
    setup: tuple[Project, str],
    workdir: Path,
    number: int,
    args: argparse.Namespace,
) -> Figures:
    project, url = setup
    log = workdir / f"{backend}-{number}.log"
    script = workdir / "login.lua"
    with serve_app(project, url, log=log, **FAILURE_LIMITS) as app:
        target = Target(app.url, app.pid, sign_in(app.url), script, log)
        return {
            f"c{connections}": load(target, "me", connections, args.seconds)
            for connections in args.connections
        }


def bench(args: argparse.Namespace) -> Figures:
    with (
        tempfile.TemporaryDirectory(prefix="bench-auth-read-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        (workdir / "login.lua").write_text(WRK_SCRIPT)
        setups = {backend: stack.enter_context(prepared(backend, workdir)) for backend in BACKENDS}

        def one_run(number: int) -> Figures:
            order = BACKENDS if number % 2 else tuple(reversed(BACKENDS))
            figures: Figures = {}
            for backend in order:
                print(f"-- run {number}: {backend}, GET /users/me", flush=True)
                figures[backend] = measure(backend, setups[backend], workdir, number, args)
            figures["sqlite_p99_x_postgresql"] = {
                key: ratio(figures["sqlite"][key]["p99_ms"], figures["postgresql"][key]["p99_ms"])
                for key in figures["sqlite"]
            }
            figures["load"] = report_load(f"after run {number}")
            return figures

        result = repeat(args.runs, one_run)
    errors = sum(
        row["errors"] + row["non_2xx"]
        for run in result["runs"]
        for backend in BACKENDS
        for row in run[backend].values()
    )
    return result | {"errors": errors}


def report(result: Figures, args: argparse.Namespace) -> None:
    median = result["median"]
    print(
        f"\nGET /users/me, every feature with auth, served as shipped; median of {args.runs} run(s)"
    )
    for key, ratio_value in median["sqlite_p99_x_postgresql"].items():
        for backend in BACKENDS:
            row = median[backend][key]
            rate, p50, p99 = row["ok_rps"], row["p50_ms"], row["p99_ms"]
            print(f"  {backend:<11} {key}: {rate:>8} 2xx/s  p50 {p50} ms  p99 {p99} ms")
        ok = ratio_value is not None and ratio_value <= TARGET_RATIO
        print(
            check_line(
                f"SQLite p99 / PostgreSQL ({key})", f"{ratio_value}x", f"<= {TARGET_RATIO:g}x", ok
            )
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", default=10, type=int, help="measured seconds per load")
    parser.add_argument("--connections", default=[16], type=connection_counts)
    add_runs_argument(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    return run_bench(
        "auth_read",
        args,
        lambda: bench(args),
        targets={"sqlite_p99_x_postgresql": f"<= {TARGET_RATIO:g}"},
        report=lambda result: report(result, args),
        failed=lambda result: result["errors"] > 0,
    )


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, databases and temp dirs removed")
