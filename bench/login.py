"""What a sign-in costs (``auth`` feature): ``POST /auth/token`` against an authenticated
request, on the project as a user gets it.

    uv run python bench/login.py [--database sqlite|postgresql|mysql] [--seconds 10]
                                 [--connections 4,16] [--samples 30] [--runs 3]

Renders the template with every feature, ``auth`` included (every other answer its default),
``uv sync``s it, creates and migrates a database (``alembic upgrade heads``) and creates the
first superuser with the project's own ``python -m <pkg>.create_superuser``. Each run then
serves the app as shipped (``python -m <pkg>``: the project's defaults, log level info, so a
JSON access line per request) with the sign-in failure limits changed: ``LOGIN_FAILURES_*``
are ``1000000/minute`` instead of ``5/15 minutes`` per account and address (and the others),
or the wrong-password samples would measure 429s (successes count nothing). Sign-in
verifies an Argon2id hash (m=64 MiB, t=3, p=4) in a worker thread.
Each run measures, on one server:

- one request at a time (``--samples`` of each kind, interleaved, on one kept-alive
  connection, after two unmeasured of each): sign-in with the right password, with a wrong
  password, with an unknown e-mail address (the app then verifies a dummy hash, so that the
  answer's timing does not tell which addresses have accounts), ``GET /users/me`` with the
  token (JWT check and one SELECT: an authenticated request without hashing) and
  ``GET /health/live``: status, median and p95 latency, the server's CPU per request;
- under load (wrk, at each of ``--connections``; a 3 s warm-up, then ``--seconds``; the
  order reversed every other run): sign-ins with the right password, ``GET /users/me``,
  ``GET /health/live``: 2xx answers a second, p50, p99 (wrk's) and the server's CPU per 2xx
  answer (``utime + stime`` of ``/proc/<pid>/stat``, from the server idle before the
  measured run to idle after it, over the 2xx answers its access lines count: a sign-in in
  flight when wrk stops still hashes). The server's log of the run is read back: its answers
  by status, and the errors it logged, shown for every load that had some (a failed sign-in
  did not hash: it is left out of the per-request figures).

Ratios are taken within each run (the machine is noisy: both sides measured minutes apart at
most), then their medians over the runs reported: a sign-in in multiples of an authenticated
request (CPU per request, 2xx/s at the same concurrency, latency one at a time) and the
unknown-address and wrong-password latencies over the right password's (close to 1: no
enumeration by timing). Performance is measured, not asserted: the exit status is 1 only if
an answer was not the expected one or a load had errors. Ends with every figure as one JSON
line.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from _common import (
    DB_TIMEOUT,
    THREADS,
    WARMUP_SECONDS,
    BenchError,
    Figures,
    Project,
    WrkResult,
    add_runs_argument,
    alembic_upgrade,
    ensure_wrk,
    main_with_cleanup,
    proc_cpu_seconds,
    proc_status_kib,
    ranged,
    rendered_project,
    repeat,
    report_load,
    run,
    run_bench,
    serve_app,
    temp_database,
    wrk,
)

from harness import FEATURES

DATABASES = ("sqlite", "postgresql", "mysql")
# Every feature, auth included (copier's defaults leave auth off).
DATA = {"project_name": "Bench Service", "features": list(FEATURES)}
DATABASE_NAME = "bench_login"
EMAIL = "bench@example.com"
PASSWORD = "a-long-bench-password"
WRONG_PASSWORD = "not-the-bench-password"
UNKNOWN_EMAIL = "nobody@example.com"
# The only settings not as shipped (failures only count; shipped "5/15 minutes" per account
# and address, "30/15 minutes" per address, "50/hour" per account).
RATE_LIMIT = "1000000/minute"
SHIPPED_RATE_LIMIT = "5/15 minutes"
FAILURE_LIMITS = {
    "LOGIN_FAILURES_PER_ACCOUNT_ADDRESS": RATE_LIMIT,
    "LOGIN_FAILURES_PER_ADDRESS": RATE_LIMIT,
    "LOGIN_FAILURES_PER_ACCOUNT": RATE_LIMIT,
}
SAMPLES = 30
UNMEASURED = 2  # of each kind, before the samples one at a time
CONNECTIONS = (4, 16)
SECONDS = 10
# wrk's default (2 s) would count slow sign-ins at 16 connections as socket errors.
WRK_TIMEOUT = "30s"
REQUEST_TIMEOUT = 60.0
# The server counts as idle when it used at most IDLE_CPU seconds of CPU (a clock tick is
# 0.01 s) in IDLE_INTERVAL seconds.
IDLE_CPU = 0.02
IDLE_INTERVAL = 0.5
IDLE_TIMEOUT = 60.0
KIB_PER_MIB = 1024

# Written to the temporary directory for wrk: every request is args[1] (a method) with args[2] as
# its form body and args[3] as its Authorization header (each left out when empty). wrk
# builds the request once per thread after init(): no Lua runs per request.
WRK_SCRIPT = """\
function init(args)
  wrk.method = args[1]
  if (args[2] or "") ~= "" then
    wrk.body = args[2]
    wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
  end
  if (args[3] or "") ~= "" then
    wrk.headers["Authorization"] = args[3]
  end
end
"""


def form(email: str, password: str) -> str:
    """The OAuth2 password form ``POST /auth/token`` takes."""
    return urllib.parse.urlencode({"username": email, "password": password})


@dataclass(frozen=True)
class Kind:
    """One kind of request: what is sent and the status it must answer."""

    label: str
    method: str
    path: str
    status: int
    body: str = ""
    bearer: bool = False  # send the superuser's access token


# The requests measured one at a time; "right", "me" and "live" are also loaded with wrk.
KINDS = {
    "right": Kind("sign-in, right password", "POST", "/auth/token", 200, form(EMAIL, PASSWORD)),
    "wrong": Kind(
        "sign-in, wrong password", "POST", "/auth/token", 401, form(EMAIL, WRONG_PASSWORD)
    ),
    "unknown": Kind(
        "sign-in, unknown e-mail", "POST", "/auth/token", 401, form(UNKNOWN_EMAIL, PASSWORD)
    ),
    "me": Kind("GET /users/me (bearer token)", "GET", "/users/me", 200, bearer=True),
    "live": Kind("GET /health/live", "GET", "/health/live", 200),
}
LOADED = ("right", "me", "live")
LOAD_LABELS = {
    "right": "sign-in (POST /auth/token)",
    "me": KINDS["me"].label,
    "live": KINDS["live"].label,
}


def connection_counts(value: str) -> list[int]:
    """An argparse ``type``: comma-separated wrk connection counts (at least wrk's threads)."""
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {value!r}") from None
    if not counts or min(counts) < THREADS:
        raise argparse.ArgumentTypeError(f"give counts of at least {THREADS}; got {value!r}")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sqlite", choices=DATABASES)
    parser.add_argument("--seconds", default=SECONDS, type=int, help="measured seconds per load")
    parser.add_argument(
        "--connections",
        default=list(CONNECTIONS),
        type=connection_counts,
        help="comma-separated wrk connection counts (default 4,16)",
    )
    parser.add_argument(
        "--samples", default=SAMPLES, type=int, help="requests of each kind one at a time"
    )
    add_runs_argument(parser)
    args = parser.parse_args(argv)
    if args.samples < 2 or args.seconds < 1:
        parser.error("--samples must be at least 2 and --seconds at least 1")
    return args


# --- the project ----------------------------------------------------------------------------


def create_superuser(project: Project, url: str) -> None:
    """The project's documented command, with the account in its environment."""
    settings = {
        "DATABASE_URL": url,
        "FIRST_SUPERUSER_EMAIL": EMAIL,
        "FIRST_SUPERUSER_PASSWORD": PASSWORD,
    }
    module = f"{project.package}.features.auth.create_superuser"
    if not (project.path / "src" / project.package / "features/auth").is_dir():
        module = f"{project.package}.create_superuser"  # before 0.9.0
    cmd: list[str | Path] = [project.python, "-m", module]
    run(cmd, cwd=project.path, env=project.env(settings), timeout=DB_TIMEOUT)


# --- one request at a time ------------------------------------------------------------------


class Client:
    """One kept-alive HTTP/1.1 connection to the server; each request timed on its own."""

    def __init__(self, base: str, token: str | None = None) -> None:
        parts = urllib.parse.urlsplit(base)
        self.connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=REQUEST_TIMEOUT
        )
        self.token = token

    def send(self, kind: Kind) -> tuple[int, bytes, float]:
        """(status, body, seconds from sending to the last byte of the answer)."""
        headers: dict[str, str] = {}
        if kind.body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        if kind.bearer:
            if self.token is None:
                raise BenchError(f"{kind.label}: no token to send")
            headers["Authorization"] = f"Bearer {self.token}"
        start = time.perf_counter()
        self.connection.request(kind.method, kind.path, body=kind.body or None, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, body, time.perf_counter() - start

    def expect(self, kind: Kind) -> tuple[bytes, float]:
        """``send``; BenchError unless the answer has the kind's status."""
        status, body, seconds = self.send(kind)
        if status != kind.status:
            raise BenchError(f"{kind.label} answered {status}, not {kind.status}: {body[:300]!r}")
        return body, seconds

    def close(self) -> None:
        self.connection.close()


@contextlib.contextmanager
def client(base: str, token: str | None = None) -> Iterator[Client]:
    connection = Client(base, token)
    try:
        yield connection
    finally:
        connection.close()


def sign_in(base: str) -> str:
    """The superuser's access token, checked with ``GET /users/me``."""
    with client(base) as signing:
        body, _ = signing.expect(KINDS["right"])
    answer = json.loads(body)
    if answer.get("token_type") != "bearer" or not answer.get("access_token"):
        raise BenchError(f"unexpected sign-in answer: {answer}")
    with client(base, answer["access_token"]) as checking:
        me = json.loads(checking.expect(KINDS["me"])[0])
    if me.get("email") != EMAIL or not me.get("is_superuser"):
        raise BenchError(f"GET /users/me answered {me}, not the superuser {EMAIL}")
    return str(answer["access_token"])


def p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def one_at_a_time(base: str, pid: int, token: str, samples: int) -> Figures:
    """``samples`` of each kind, interleaved (the order rotating, so that no kind always
    follows the same one): per kind its status, median and p95 latency, server CPU/request.

    The CPU is read from ``/proc`` before and after each request (outside the timed part); it
    counts in clock ticks (10 ms), which the sum over the samples evens out for sign-ins but
    not for requests of a millisecond or two: the loads measure those better.
    """
    names = list(KINDS)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu = dict.fromkeys(names, 0.0)
    with client(base, token) as timed:
        for _ in range(UNMEASURED):
            for name in names:
                timed.expect(KINDS[name])
        for number in range(samples):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                before = proc_cpu_seconds(pid)
                _, elapsed = timed.expect(KINDS[name])
                cpu[name] += proc_cpu_seconds(pid) - before
                seconds[name].append(elapsed)
    return {
        name: {
            "status": KINDS[name].status,
            "median_ms": round(statistics.median(seconds[name]) * 1000, 2),
            "p95_ms": round(p95(seconds[name]) * 1000, 2),
            "cpu_ms": round(cpu[name] / samples * 1000, 2),
        }
        for name in names
    }


# --- under load -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """The server of one run, as the loads need it."""

    base: str
    pid: int
    token: str
    script: Path  # WRK_SCRIPT, written to a file
    log: Path  # the server's output: its JSON access lines and errors


def server_answers(log: Path, offset: int, path: str) -> tuple[dict[str, int], list[str]]:
    """What the server logged after byte ``offset``: its answers to ``path`` by status (the
    JSON access lines) and the distinct errors (each traceback's exception line)."""
    with log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode(errors="replace")
    statuses: dict[str, int] = {}
    errors: dict[str, None] = {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if record.get("path") == path and "status" in record:
            status = str(record["status"])
            statuses[status] = statuses.get(status, 0) + 1
        if record.get("level") == "ERROR":
            # The exception's own line: the traceback's last that is not indented or a note.
            lines = str(record.get("exc_info") or record.get("message", "")).splitlines()
            raised = [entry for entry in lines if entry and entry[0] not in " ([" and ":" in entry]
            errors[raised[-1] if raised else str(record.get("message"))] = None
    return dict(sorted(statuses.items())), list(errors)


def wait_idle(pid: int) -> float:
    """Wait until the server has finished what it was doing (its CPU time no longer grows);
    its CPU seconds then. Gives up after IDLE_TIMEOUT (and says so)."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    used = proc_cpu_seconds(pid)
    while True:
        time.sleep(IDLE_INTERVAL)
        now = proc_cpu_seconds(pid)
        if now - used <= IDLE_CPU:
            return now
        if time.monotonic() > deadline:
            print(f"   note: the server was still busy after {IDLE_TIMEOUT:g} s", flush=True)
            return now
        used = now


def load(target: Target, name: str, connections: int, seconds: float) -> Figures:
    """wrk on one kind of request: a warm-up, then the measured run with the server's CPU
    and what the server logged meanwhile."""
    kind = KINDS[name]
    bearer = f"Bearer {target.token}" if kind.bearer else ""

    def wrk_for(duration: float) -> WrkResult:
        return wrk(
            target.base + kind.path,
            duration=duration,
            connections=connections,
            threads=THREADS,
            script=target.script,
            script_args=[kind.method, kind.body, bearer],
            timeout=WRK_TIMEOUT,
        )

    wrk_for(WARMUP_SECONDS)
    # From idle to idle: the sign-ins in flight when wrk stops go on hashing (their client
    # gone), so their CPU and access lines belong to the run that sent them.
    before = wait_idle(target.pid)
    offset = target.log.stat().st_size
    result = wrk_for(seconds)
    used = wait_idle(target.pid) - before
    statuses, errors = server_answers(target.log, offset, kind.path)
    # The 2xx answers the server gave: a failed sign-in did not hash, so only these count
    # in the CPU per request (wrk's own count misses the ones in flight when it stopped).
    served = sum(count for status, count in statuses.items() if status.startswith("2"))
    done = result.requests - result.non_2xx_3xx
    return result.figures() | {
        "ok_rps": round(result.rps * done / result.requests, 1) if result.requests else 0.0,
        "non_2xx": result.non_2xx_3xx,
        "socket_errors": result.socket_errors,
        # The server's CPU per 2xx answer: what bounds req/s on saturated cores, and less
        # disturbed than req/s by other work on a shared machine.
        "cpu_ms": round(used / served * 1000, 3) if served else None,
        "server_statuses": statuses,
        "server_errors": errors,
    }


def under_load(target: Target, number: int, args: argparse.Namespace) -> Figures:
    order = LOADED if number % 2 else tuple(reversed(LOADED))
    figures: Figures = {}
    for connections in args.connections:
        row: Figures = {}
        for name in order:
            print(f"   wrk {connections} connections: {KINDS[name].label}", flush=True)
            row[name] = load(target, name, connections, args.seconds)
        figures[f"c{connections}"] = {name: row[name] for name in LOADED}
    return figures


# --- one run, the ratios --------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 3)


def ratios(single: Figures, loads: Figures) -> Figures:
    """What this run says: a sign-in in multiples of the baselines; the timing of the three
    sign-in answers against each other."""
    figures: Figures = {
        "latency_right_x_me": ratio(single["right"]["median_ms"], single["me"]["median_ms"]),
        "unknown_x_right": ratio(single["unknown"]["median_ms"], single["right"]["median_ms"]),
        "wrong_x_right": ratio(single["wrong"]["median_ms"], single["right"]["median_ms"]),
        "unknown_x_wrong": ratio(single["unknown"]["median_ms"], single["wrong"]["median_ms"]),
    }
    for key, row in loads.items():
        figures[key] = {
            "cpu_right_x_me": ratio(row["right"]["cpu_ms"], row["me"]["cpu_ms"]),
            "cpu_right_x_live": ratio(row["right"]["cpu_ms"], row["live"]["cpu_ms"]),
            "rps_me_x_right": ratio(row["me"]["ok_rps"], row["right"]["ok_rps"]),
        }
    return figures


@dataclass(frozen=True)
class Setup:
    """What every run serves: the render, its database, the wrk script."""

    project: Project
    url: str
    workdir: Path  # the wrk script, the servers' logs
    script: Path


def one_run(setup: Setup, number: int, args: argparse.Namespace) -> Figures:
    """Serve once; requests one at a time, then the loads; this run's figures and ratios."""
    log = setup.workdir / f"server-{number}.log"
    with serve_app(setup.project, setup.url, log=log, **FAILURE_LIMITS) as app:
        pid = app.pid  # found once: looking it up scans /proc
        token = sign_in(app.url)
        print(f"   one at a time: {args.samples} of each of {len(KINDS)} kinds", flush=True)
        single = one_at_a_time(app.url, pid, token, args.samples)
        print(f"   {json.dumps(single)}", flush=True)
        loads = under_load(Target(app.url, pid, token, setup.script, log), number, args)
        peak_rss = proc_status_kib(pid, "VmHWM") / KIB_PER_MIB
    figures = {
        "one_at_a_time": single,
        "loads": loads,
        "ratios": ratios(single, loads),
        "peak_rss_mib": round(peak_rss, 1),
        "load": report_load(f"after run {number}"),
    }
    print(f"   {json.dumps({'loads': loads, 'ratios': figures['ratios']})}", flush=True)
    return figures


def bench(args: argparse.Namespace) -> Figures:
    print(f"== render ({args.database}, every feature with auth), uv sync", flush=True)
    data = {**DATA, "database": args.database}
    with (
        rendered_project(data, prefix=f"bench-login-{args.database}-") as project,
        tempfile.TemporaryDirectory(prefix="bench-login-") as tmp,
        temp_database(project, Path(tmp), DATABASE_NAME) as url,
    ):
        if "auth" not in project.answers["features"]:
            raise BenchError("the render has no auth feature")
        print(f"   migrate {url}, create the superuser {EMAIL}", flush=True)
        alembic_upgrade(project, url)
        create_superuser(project, url)
        script = Path(tmp) / "login.lua"
        script.write_text(WRK_SCRIPT)
        setup = Setup(project, url, Path(tmp), script)
        result = repeat(args.runs, lambda number: one_run(setup, number, args))
    errors = sum(
        figures["errors"]
        for run_figures in result["runs"]
        for row in run_figures["loads"].values()
        for figures in row.values()
    )
    return result | {"errors": errors, "checks": {"no_errors": errors == 0}}


# --- report ---------------------------------------------------------------------------------


def figure_line(label: str, figure: str) -> str:
    return f"  {label:<58}{figure:>24}"


def print_table(result: Figures, args: argparse.Namespace) -> None:
    median = result["median"]
    single, loads = median["one_at_a_time"], median["loads"]
    print(
        f"\n{args.database}: every feature (auth on), served as shipped but "
        f"LOGIN_FAILURES_*={RATE_LIMIT} (shipped: {SHIPPED_RATE_LIMIT}, ...); "
        f"median of {args.runs} run(s) [range]"
    )
    print(
        f"One at a time ({args.samples} of each, interleaved, one kept-alive connection; CPU in "
        "10 ms ticks, rough below a few ms):"
    )
    print(f"  {'':34}{'status':>7}{'median ms':>11}{'p95 ms':>9}{'CPU ms':>9}")
    for name, kind in KINDS.items():
        row = single[name]
        print(
            f"  {kind.label:34}{row['status']:>7}{row['median_ms']:>11.2f}{row['p95_ms']:>9.2f}"
            f"{row['cpu_ms']:>9.2f}"
        )
    print(
        f"Under load (wrk {THREADS} threads, {args.seconds} s after {WARMUP_SECONDS:g} s; ok/s: "
        "2xx answers a second; CPU: the server's utime+stime, idle to idle, per 2xx answer):"
    )
    print(
        f"  {'conns':<7}{'':30}{'ok/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms':>9}"
        f"{'non-2xx':>9}{'socket':>8}"
    )
    for key, row in loads.items():
        for name in LOADED:
            figures = row[name]
            cpu = "n/a" if figures["cpu_ms"] is None else f"{figures['cpu_ms']:.3f}"
            print(
                f"  {key[1:]:<7}{LOAD_LABELS[name]:30}{figures['ok_rps']:>9.1f}"
                f"{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}{cpu:>9}"
                f"{figures['non_2xx']:>9}{figures['socket_errors']:>8}"
            )
    print_failures(result)
    print("A sign-in in multiples of an authenticated request (ratios within each run):")
    print(
        figure_line(
            "latency one at a time: sign-in / GET /users/me",
            ranged(result, "ratios", "latency_right_x_me", digits=1),
        )
    )
    for key in loads:
        conns = f"{key[1:]} connections"
        for path, label in (
            ("cpu_right_x_me", f"server CPU, {conns}: sign-in / GET /users/me"),
            ("cpu_right_x_live", f"server CPU, {conns}: sign-in / GET /health/live"),
            ("rps_me_x_right", f"2xx/s, {conns}: GET /users/me / sign-in"),
        ):
            print(figure_line(label, ranged(result, "ratios", key, path, digits=1)))
    print("Timing of the sign-in answers (median latency; 1 = indistinguishable):")
    for path, label in (
        ("unknown_x_right", "unknown e-mail / right password"),
        ("wrong_x_right", "wrong password / right password"),
        ("unknown_x_wrong", "unknown e-mail / wrong password"),
    ):
        print(figure_line(label, ranged(result, "ratios", path, digits=3)))
    print(figure_line("server peak RSS (VmHWM), MiB", ranged(result, "peak_rss_mib", digits=0)))
    print(figure_line("wrk errors (all loads, all runs)", str(result["errors"])), flush=True)


def print_failures(result: Figures) -> None:
    """Each load of each run that had errors: the server's answers and what it logged."""
    for number, run_figures in enumerate(result["runs"], start=1):
        for key, row in run_figures["loads"].items():
            for name in LOADED:
                figures = row[name]
                if not (figures["errors"] or figures["server_errors"]):
                    continue
                answers = ", ".join(f"{n} x {s}" for s, n in figures["server_statuses"].items())
                print(
                    f"  ! run {number}, {key[1:]} connections, {LOAD_LABELS[name]}: the server "
                    f"answered {answers or 'nothing logged'}"
                )
                for error in figures["server_errors"]:
                    print(f"      logged: {error[:150]}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_wrk()
    extra: Mapping[str, object] = {
        "database": args.database,
        "seconds": args.seconds,
        "samples": args.samples,
        "login_failure_limits": RATE_LIMIT,
        "features": DATA["features"],
    }
    return run_bench(
        "login",
        args,
        lambda: bench(args),
        targets={},  # figures only: nothing is asserted
        report=lambda result: print_table(result, args),
        failed=lambda result: not result["checks"]["no_errors"],
        extra=extra,
    )


if __name__ == "__main__":
    main_with_cleanup(main, "server stopped, database and temp dirs removed")
