"""Upstream calls: the rendered app's ``GET /upstream/things`` against a 50 ms upstream.

    .venv/bin/python bench/upstream.py [--clients httpx,httpx2] [--duration 10]
                                       [--connections 64]

Renders the template with the ``http_client`` feature (SQLite), starts ``upstream_server.py``
(answers every GET after exactly 50 ms) and loads the app with wrk: a 3 s warm-up, then the
measured run. With C connections each waiting 50 ms upstream, the bound is C / 0.05 req/s
(1280 for 64); the target is 80 % of it with no errors. The upstream alone is loaded the
same way first, to show what the bound looks like on this machine. Each client is also
measured without the app (``client_load.py``: the app's own client in C tasks calling the
upstream), which tells the client's share of the app's CPU time from the rest.

Client variants: ``httpx2`` is the project as rendered (the template's choice); ``httpx`` is
a copy with ``uv add httpx`` and its one ``import httpx2 as httpx`` (``http.py``) turned into
``import httpx``, which is how the template keeps the choice to one line.
The app uses the template's default client settings (printed). Prints a table
and, as the last line, every figure as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from _common import (
    BENCH,
    UV,
    BenchError,
    Project,
    WrkResult,
    alembic_upgrade,
    comma_choices,
    ensure_wrk,
    free_port,
    http_get,
    interrupt_on_sigterm,
    load_average,
    main_with_cleanup,
    proc_cpu_seconds,
    rendered_project,
    run,
    serve,
    server_pid,
    sync,
    temp_database,
    tool_env,
    wrk,
)

CLIENTS = ("httpx", "httpx2")
DATA = {"project_name": "Bench Service", "database": "sqlite", "features": ["http_client"]}
UPSTREAM_SERVER = BENCH / "upstream_server.py"
CLIENT_LOAD = BENCH / "client_load.py"
DELAY_MS = 50.0
PATH = "/upstream/things"
WARMUP_SECONDS = 3
THREADS = 2
TARGET_RATIO = 0.8
SYNC_TIMEOUT = 600.0
IMPORT_HTTPX2 = re.compile(r"^import httpx2 as httpx$", re.MULTILINE)
SETTINGS_PROBE = """
import json
from bench_service.settings import Settings
s = Settings()
print(json.dumps({k: v for k, v in s.model_dump().items() if k.startswith("upstream_")}))
"""
CLIENT_PROBE = "import bench_service.http as h; print(h.httpx.__name__, h.httpx.__version__)"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default=",".join(CLIENTS), type=comma_choices(CLIENTS))
    parser.add_argument("--duration", default=10, type=int, help="measured seconds per run")
    parser.add_argument("--connections", default=64, type=int, help="wrk connections")
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


def probe(project: Project, code: str, env: Mapping[str, str]) -> str:
    return run([project.python, "-c", code], cwd=project.path, env=env, timeout=60).strip()


# --- load -----------------------------------------------------------------------------------


def app_env(project: Project, database_url: str, upstream: str, port: int) -> dict[str, str]:
    return project.serving_env(database_url, port, UPSTREAM_BASE_URL=upstream)


def loaded(url: str, pids: Sequence[int], args: argparse.Namespace) -> dict[str, Any]:
    """Warm up, then the measured wrk run; CPU use of ``pids`` during the measured run."""
    wrk(url, duration=WARMUP_SECONDS, connections=args.connections, threads=THREADS)
    before = [proc_cpu_seconds(pid) for pid in pids]
    result = wrk(url, duration=args.duration, connections=args.connections, threads=THREADS)
    used = [proc_cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
    return figures(result, args) | {
        "cpu_pct": [round(100 * u / args.duration) for u in used],
        "cpu_ms_per_request": round(1000 * used[0] / max(result.requests, 1), 3),
    }


def figures(result: WrkResult, args: argparse.Namespace) -> dict[str, Any]:
    bound = bound_rps(args.connections)
    return {
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "errors": result.errors,
        "socket_errors": result.socket_errors,  # wrk's own 2 s timeout counts here
        "non_2xx": result.non_2xx_3xx,
        "requests": result.requests,
        "ratio_to_bound": round(result.rps / bound, 3),
    }


def client_alone(
    project: Project, env: Mapping[str, str], upstream_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    """The app's client without the app: ``client_load.py`` with the project's Python."""
    cmd = [
        str(project.python),
        str(CLIENT_LOAD),
        project.package,
        f"--concurrency={args.connections}",
        f"--duration={args.duration}",
        f"--warmup={WARMUP_SECONDS}",
    ]
    start = proc_cpu_seconds(upstream_pid)
    timeout = args.duration + WARMUP_SECONDS + 60
    result: dict[str, Any] = json.loads(run(cmd, cwd=project.path, env=env, timeout=timeout))
    # The warm-up is in this figure too: the upstream's share over the whole client run.
    used = proc_cpu_seconds(upstream_pid) - start
    result["upstream_cpu_pct"] = round(100 * used / (args.duration + WARMUP_SECONDS))
    result["ratio_to_bound"] = round(result["rps"] / bound_rps(args.connections), 3)
    return result


def check_answer(base: str) -> None:
    status, body = http_get(base + PATH, timeout=10)
    if status != 200:
        raise BenchError(f"GET {PATH} answered {status}: {body[:300]!r}")
    print(f"   GET {PATH} -> {status} {body.decode(errors='replace')}", flush=True)


def bench_client(
    project: Project, client: str, upstream: str, upstream_pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    with (
        variant(project, client) as target,
        temp_database(target, target.path.parent, "bench_upstream") as url,
    ):
        alembic_upgrade(target, url)
        port = free_port()
        env = app_env(target, url, upstream, port)
        name, version = probe(target, CLIENT_PROBE, env).split()
        settings = json.loads(probe(target, SETTINGS_PROBE, env))
        print(f"   client module {name} {version}; settings {settings}", flush=True)
        print(f"   {client} alone: {args.connections} tasks calling the upstream", flush=True)
        alone = client_alone(target, env, upstream_pid, args)
        print(f"   {json.dumps(alone)}", flush=True)
        timing = f"{args.duration} s after a {WARMUP_SECONDS} s warm-up"
        with serve([target.python, "-m", target.package], env, port, cwd=target.path) as base:
            pid = server_pid(port)
            check_answer(base)
            print(f"   load {base}{PATH} ({timing}; app pid {pid})", flush=True)
            result = loaded(base + PATH, [pid, upstream_pid], args)
    return result | {"client": f"{name} {version}", "settings": settings, "client_alone": alone}


def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print("== render (http_client, sqlite), uv sync", flush=True)
    with rendered_project(DATA, prefix="bench-upstream-") as project:
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
            upstream_pid = server_pid(port)
            print(f"== upstream alone: {upstream} (pid {upstream_pid})", flush=True)
            results["upstream_direct"] = loaded(upstream + "/things", [upstream_pid], args)
            for client in args.clients:
                print(f"== rendered app with {client}", flush=True)
                try:
                    results[client] = bench_client(project, client, upstream, upstream_pid, args)
                except BenchError as exc:
                    print(f"!! {client} failed: {exc}", file=sys.stderr, flush=True)
                    results[client] = {"error": str(exc).splitlines()[0]}
    return results


def _row(label: str, row: Mapping[str, Any], cpu: Any, upstream_cpu: Any) -> str:
    ok = row["ratio_to_bound"] >= TARGET_RATIO and row["errors"] == 0
    p50 = f"{row['p50_ms']:.2f}" if "p50_ms" in row else "-"
    p99 = f"{row['p99_ms']:.2f}" if "p99_ms" in row else "-"
    return (
        f"  {label:16}{row['rps']:>9.1f}{p50:>9}{p99:>9}{row['errors']:>8}"
        f"{row['ratio_to_bound']:>8.3f}{cpu:>7}{row['cpu_ms_per_request']:>12.3f}"
        f"{upstream_cpu:>8}  {'ok' if ok else 'MISSED'}"
    )


def print_table(results: Mapping[str, Any], args: argparse.Namespace) -> None:
    bound = bound_rps(args.connections)
    print(
        f"\nGET {PATH}: upstream {DELAY_MS:g} ms, {args.connections} connections, "
        f"{args.duration} s after {WARMUP_SECONDS} s warm-up; bound {bound:.0f} req/s, "
        f"target >= {TARGET_RATIO:.0%} of it ({TARGET_RATIO * bound:.0f}) and 0 errors"
    )
    print(
        f"  {'':16}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'/bound':>8}"
        f"{'cpu%':>7}{'cpu ms/req':>12}{'upstr%':>8}"
    )
    for name, row in results.items():
        if "error" in row:
            print(f"  {name:16}  failed: {row['error']}")
        elif name == "upstream_direct":
            print(_row("upstream alone", row, "-", row["cpu_pct"][0]))
        else:
            print(_row(f"app + {name}", row, row["cpu_pct"][0], row["cpu_pct"][1]))
            alone = row["client_alone"]
            print(_row(f"{name} alone", alone, alone["cpu_pct"], alone["upstream_cpu_pct"]))
    print(
        "  app + X: wrk -> rendered app -> upstream; X alone: the app's client in"
        f" {args.connections} tasks, no app, no wrk.\n"
        "  cpu% and cpu ms/req: the app's (or the client process's) CPU time in the measured"
        " run; upstr%: the upstream's.",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    ensure_wrk()
    before = load_average()
    print(f"load average before: {', '.join(f'{v:.2f}' for v in before)} (2 cores shared)")
    results = bench(args)
    after = load_average()
    print_table(results, args)
    print(f"load average after: {', '.join(f'{v:.2f}' for v in after)}")
    summary = {
        "bound_rps": bound_rps(args.connections),
        "target_ratio": TARGET_RATIO,
        "connections": args.connections,
        "duration_s": args.duration,
        "load_average_before": before,
        "load_average_after": after,
        "results": results,
    }
    print(json.dumps({"upstream": summary}))
    return 1 if any("error" in row for row in results.values()) else 0


if __name__ == "__main__":
    main_with_cleanup(main, "servers stopped, temp dirs removed")
