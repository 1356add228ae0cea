"""Upstream calls as a user gets the project: ``GET /upstream/x`` against a 50 ms upstream.

    .venv/bin/python bench/upstream.py [--clients httpx,httpx2] [--duration 10]
                                       [--connections 64] [--runs 3]

Renders the template with its default answers (SQLite, all features), starts
``upstream_server.py`` (answers every GET after exactly 50 ms) and, each run, measures:

- the upstream alone with wrk (C connections each waiting 50 ms: at most C / 0.05 req/s, the
  "bound", 1280 for 64);
- per client, the client alone (``client_load.py``: the app's own client, built as the app
  builds it, in C tasks calling the upstream, no app, no wrk), then the rendered app as
  shipped (default settings, log level info: a JSON access line per request) under wrk,
  3 s warm-up each.

The headline is the app's rate over its client's alone, in the same run: target >= 0.85,
with no errors; the median over the runs is reported, and the ratio to the bound and the
CPU use of each process are shown for information.

Client variants: ``httpx2`` is the project as rendered (the template's choice); ``httpx`` is
a copy with ``uv add httpx`` and its one ``import httpx2 as httpx`` (``http.py``) turned into
``import httpx``, which is how the template keeps the choice to one line.
The app uses the template's default client settings (printed). Ends with every figure as one
JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    THREADS,
    UV,
    WARMUP_SECONDS,
    BenchError,
    Figures,
    Project,
    add_load_arguments,
    alembic_upgrade,
    check_line,
    comma_choices,
    ensure_wrk,
    main_with_cleanup,
    probe,
    proc_cpu_seconds,
    ranged,
    rendered_project,
    repeat,
    run,
    run_bench,
    serve_app,
    server_pid,
    sync,
    temp_database,
    wrk,
)

from harness import free_port, http_get, serve, tool_env

CLIENTS = ("httpx", "httpx2")
SHIPPED_CLIENT = "httpx2"
DATA = {"project_name": "Bench Service", "database": "sqlite"}  # features: the default (all)
UPSTREAM_SERVER = BENCH / "upstream_server.py"
CLIENT_LOAD = BENCH / "client_load.py"
DELAY_MS = 50.0
RESOURCE = "x"
PATH = f"/upstream/{RESOURCE}"
MIN_CLIENT_RATIO = 0.85  # the app's req/s over its client's alone
SYNC_TIMEOUT = 600.0
IMPORT_HTTPX2 = re.compile(r"^import httpx2 as httpx$", re.MULTILINE)
SETTINGS_PROBE = """
import json
from {package}.settings import Settings
s = Settings()
print(json.dumps({{k: v for k, v in s.model_dump().items() if k.startswith("upstream_")}}))
"""
CLIENT_PROBE = """
try:
    import {package}.features.http_client.client as h
except ImportError:  # before 0.9.0
    import {package}.http as h
print(h.httpx.__name__, h.httpx.__version__)
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS), type=comma_choices(CLIENTS))
    add_load_arguments(parser)
    return parser.parse_args(argv)


def bound_rps(connections: int) -> float:
    return connections / (DELAY_MS / 1000.0)


# --- variants -------------------------------------------------------------------------------


@contextlib.contextmanager
def httpx_variant(project: Project) -> Iterator[Project]:
    """A copy of ``project`` (without its venv) using httpx 0.28; removed on exit."""
    with tempfile.TemporaryDirectory(prefix="bench-upstream-httpx-") as tmp:
        path = Path(tmp) / "project"
        shutil.copytree(project.path, path, ignore=shutil.ignore_patterns(".venv", "*.db"))
        changed = []
        for source in sorted((path / "src").rglob("*.py")):
            text = source.read_text()
            new, count = IMPORT_HTTPX2.subn("import httpx", text)
            if count:
                source.write_text(new)
                changed.append(str(source.relative_to(path)))
        print(f"   httpx copy: import swapped in {', '.join(changed)}", flush=True)
        variant = Project(path=path, answers=project.answers)
        run(
            [UV, "add", "--python", "3.13", "httpx"],
            cwd=path,
            env=tool_env(),
            timeout=SYNC_TIMEOUT,
        )
        sync(variant)
        yield variant


@contextlib.contextmanager
def variant(project: Project, client: str) -> Iterator[Project]:
    if client == "httpx2":
        yield project
    else:
        with httpx_variant(project) as copy:
            yield copy


@dataclass(frozen=True)
class Target:
    """One client variant of the project, migrated, with the upstream's URL."""

    client: str
    project: Project
    database_url: str
    upstream: str

    def env(self) -> dict[str, str]:
        """The settings the app is served with (port aside), for the client alone too."""
        return self.project.env(
            {"DATABASE_URL": self.database_url, "UPSTREAM_BASE_URL": self.upstream}
        )


# --- load -----------------------------------------------------------------------------------


def loaded(url: str, pids: Sequence[int], args: argparse.Namespace) -> Figures:
    """Warm up, then the measured wrk run; CPU use of ``pids`` during the measured run."""
    options = {"connections": args.connections, "threads": THREADS}
    wrk(url, duration=WARMUP_SECONDS, **options)
    before = [proc_cpu_seconds(pid) for pid in pids]
    result = wrk(url, duration=args.duration, **options)
    used = [proc_cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
    return result.figures() | {
        "ratio_to_bound": round(result.rps / bound_rps(args.connections), 3),
        "cpu_pct": [round(100 * u / args.duration) for u in used],
        "cpu_ms_per_request": round(1000 * used[0] / max(result.requests, 1), 3),
    }


def client_alone(target: Target, upstream_pid: int, args: argparse.Namespace) -> Figures:
    """The app's client without the app: ``client_load.py`` with the project's Python."""
    project = target.project
    cmd = [
        str(project.python),
        str(CLIENT_LOAD),
        project.package,
        f"--concurrency={args.connections}",
        f"--duration={args.duration}",
        f"--warmup={WARMUP_SECONDS}",
        f"--path=/{RESOURCE}",
    ]
    start = proc_cpu_seconds(upstream_pid)
    timeout = args.duration + WARMUP_SECONDS + 60
    result: Figures = json.loads(run(cmd, cwd=project.path, env=target.env(), timeout=timeout))
    # The warm-up is in this figure too: the upstream's share over the whole client run.
    used = proc_cpu_seconds(upstream_pid) - start
    result["upstream_cpu_pct"] = round(100 * used / (args.duration + WARMUP_SECONDS))
    result["ratio_to_bound"] = round(result["rps"] / bound_rps(args.connections), 3)
    return result


def check_answer(base: str) -> None:
    status, body = http_get(base + PATH, timeout=10)
    if status != 200:
        raise BenchError(f"GET {PATH} answered {status}: {body[:300]!r}")


def measure_client(target: Target, upstream_pid: int, args: argparse.Namespace) -> Figures:
    """The client alone, then the app (served as shipped) under wrk; the ratio of the two."""
    print(f"   {target.client} alone: {args.connections} tasks calling the upstream", flush=True)
    alone = client_alone(target, upstream_pid, args)
    print(f"   app with {target.client}: wrk {PATH}", flush=True)
    settings = {"UPSTREAM_BASE_URL": target.upstream}
    with serve_app(target.project, target.database_url, **settings) as app:
        check_answer(app.url)
        result = loaded(app.url + PATH, [app.pid, upstream_pid], args)
    ratio = round(result["rps"] / alone["rps"], 3) if alone["rps"] else None
    return {"app": result, "alone": alone, "ratio_to_client": ratio}


def one_run(targets: Sequence[Target], upstream_pid: int, args: argparse.Namespace) -> Figures:
    print(f"   upstream alone: wrk /{RESOURCE}", flush=True)
    figures: Figures = {
        "upstream_direct": loaded(f"{targets[0].upstream}/{RESOURCE}", [upstream_pid], args)
    }
    for target in targets:
        figures[target.client] = measure_client(target, upstream_pid, args)
        print(f"   {json.dumps(figures[target.client])}", flush=True)
    return figures


@contextlib.contextmanager
def upstream_server(project: Project) -> Iterator[tuple[str, int]]:
    """``upstream_server.py`` on a free port: its URL and pid."""
    port = free_port()
    cmd: list[str | Path] = [
        project.python,
        UPSTREAM_SERVER,
        "--port",
        str(port),
        "--delay-ms",
        f"{DELAY_MS}",
    ]
    with serve(cmd, tool_env(), port, ready_path="/ready") as upstream:
        yield upstream, server_pid(port)


def describe(target: Target) -> Figures:
    """The client module and its settings, as the app will see them."""
    project, env = target.project, target.env()
    name, version = probe(project, CLIENT_PROBE.format(package=project.package), env).split()
    settings = json.loads(probe(project, SETTINGS_PROBE.format(package=project.package), env))
    print(f"   {target.client}: module {name} {version}; settings {settings}", flush=True)
    return {"client": f"{name} {version}", "settings": settings}


def bench(args: argparse.Namespace) -> Figures:
    print("== render (defaults: sqlite, all features), uv sync", flush=True)
    with (
        rendered_project(DATA, prefix="bench-upstream-") as project,
        upstream_server(project) as (upstream, upstream_pid),
        contextlib.ExitStack() as stack,
    ):
        print(f"== upstream {upstream} (pid {upstream_pid})", flush=True)
        targets = []
        for client in args.clients:
            copy = stack.enter_context(variant(project, client))
            url = stack.enter_context(temp_database(copy, copy.path.parent, "bench_upstream"))
            alembic_upgrade(copy, url)
            targets.append(Target(client, copy, url, upstream))
        described = {target.client: describe(target) for target in targets}
        result = repeat(args.runs, lambda _number: one_run(targets, upstream_pid, args))
    errors = {
        client: sum(
            run[client][side]["errors"] for run in result["runs"] for side in ("app", "alone")
        )
        for client in args.clients
    }
    ratio = result["median"].get(SHIPPED_CLIENT, {}).get("ratio_to_client")
    checks = {
        "client_ratio_ok": ratio is not None and ratio >= MIN_CLIENT_RATIO,
        "no_errors": errors.get(SHIPPED_CLIENT, 0) == 0,
    }
    return result | {"clients": described, "errors_total": errors, "checks": checks}


# --- report ---------------------------------------------------------------------------------


def _row(label: str, row: Mapping[str, Any], cpu: Any, upstream_cpu: Any) -> str:
    p50 = f"{row['p50_ms']:.2f}" if "p50_ms" in row else "-"
    p99 = f"{row['p99_ms']:.2f}" if "p99_ms" in row else "-"
    return (
        f"  {label:16}{row['rps']:>9.1f}{p50:>9}{p99:>9}{row['errors']:>8}"
        f"{row['ratio_to_bound']:>8.3f}{cpu:>7}{row['cpu_ms_per_request']:>12.3f}"
        f"{upstream_cpu:>8}"
    )


def print_table(result: Figures, args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    bound = bound_rps(args.connections)
    print(
        f"\nGET {PATH}: upstream {DELAY_MS:g} ms, {args.connections} connections, "
        f"{args.duration} s after {WARMUP_SECONDS:g} s warm-up (bound {bound:.0f} req/s); "
        f"median of {args.runs} run(s) [range]"
    )
    print(
        f"  {'':16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'/bound':>8}"
        f"{'cpu%':>7}{'cpu ms/req':>12}{'upstr%':>8}"
    )
    direct = median["upstream_direct"]
    print(_row("upstream alone", direct, "-", direct["cpu_pct"][0]))
    for client in args.clients:
        app, alone = median[client]["app"], median[client]["alone"]
        print(_row(f"app + {client}", app, app["cpu_pct"][0], app["cpu_pct"][1]))
        print(_row(f"{client} alone", alone, alone["cpu_pct"], alone["upstream_cpu_pct"]))
    for client in args.clients:
        figure = ranged(result, client, "ratio_to_client")
        label = f"app / {client} alone req/s"
        target = f">= {MIN_CLIENT_RATIO:g}"
        if client == SHIPPED_CLIENT:
            print(check_line(label + " *", figure, target, checks["client_ratio_ok"]))
        else:
            print(f"  {label:<30}{figure:>22}   (a variant, for comparison)")
    errors = str(result["errors_total"].get(SHIPPED_CLIENT, 0))
    print(check_line(f"errors, {SHIPPED_CLIENT} (all runs)", errors, "0", checks["no_errors"]))
    print(
        f"  * as shipped. app + X: wrk -> rendered app -> upstream; X alone: the app's client"
        f" in {args.connections} tasks, no app, no wrk.\n"
        "  cpu% and cpu ms/req: the app's (or the client process's) CPU time in the measured"
        " run; upstr%: the upstream's.",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    return run_bench(
        "upstream",
        args,
        lambda: bench(args),
        targets={"min_client_ratio": MIN_CLIENT_RATIO},
        report=lambda result: print_table(result, args),
        extra={"bound_rps": bound_rps(args.connections)},
    )


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, temp dirs removed")
