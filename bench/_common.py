"""What the template's benchmarks share beyond ``harness.py``: rendered projects with their
settings, databases, serving the app as shipped, loading it with wrk, repeated runs, figures.

Runs with the template's dev environment (copier, uv); rendering, commands and serving come
from ``harness.py`` at the repository's root (shared with the tests). Code that must run inside
a rendered project (drivers) lives in ``_dbtool.py`` and ``raw_app.py`` and is started with the
rendered project's own Python.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

import harness
from harness import HOST, ROOT, UV, free_port, serve, tool_env
from harness import StepFailed as BenchError  # a step failed: its message says which
from tests.releases import Release, git, releases

BENCH = Path(__file__).resolve().parent
DBTOOL = BENCH / "_dbtool.py"
RANDOM_PATHS = BENCH / "random_paths.lua"
# Server URLs without a database; a benchmark's own database is created under them.
ADMIN_URLS = {
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/",
    "mysql": "mysql+asyncmy://root@127.0.0.1:3306/",
}
RENDER_TIMEOUT = 120.0
SYNC_TIMEOUT = 600.0
DB_TIMEOUT = 180.0
# Every load: wrk with 2 threads, an unmeasured warm-up, then the measured run.
THREADS = 2
WARMUP_SECONDS = 3.0
RUNS = 3
# A 1-minute load average under this share of the CPUs counts as a quiet machine.
QUIET_LOAD_PER_CPU = 0.25
# Served with this on top of the defaults, the app writes no access line (experiments only).
QUIET_LOGS = {"LOG_LEVEL": "warning"}


def run(
    cmd: Sequence[str | Path],
    *,
    timeout: float,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """``harness.run`` within ``timeout`` seconds; its stdout (BenchError on failure)."""
    return harness.run(cmd, cwd, env=env, timeout=timeout).stdout


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Bound in-process work (main thread only) with SIGALRM."""

    def _expired(_signum: int, _frame: FrameType | None) -> None:
        raise BenchError(f"{what}: timed out after {seconds:.0f}s")

    previous = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so every ``finally`` cleans up as on Ctrl-C."""

    def _raise(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _raise)


# --- rendering ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Project:
    """A rendered project with its own virtual environment."""

    path: Path
    answers: Mapping[str, Any]

    @property
    def package(self) -> str:
        return str(self.answers["package_name"])

    @property
    def env_prefix(self) -> str:
        return f"{self.package.upper()}_"

    @property
    def python(self) -> Path:
        return self.path / ".venv" / "bin" / "python"

    def env(self, settings: Mapping[str, str]) -> dict[str, str]:
        """``tool_env`` plus ``settings`` given without the project's env prefix."""
        return tool_env({f"{self.env_prefix}{key}": value for key, value in settings.items()})

    def serving_env(self, database_url: str, port: int, **settings: str) -> dict[str, str]:
        """The app as a user gets it: the project's defaults (and its ``.env``) with only the
        database and where to listen set; ``settings`` (without the prefix) go on top.

        The defaults log at info level, so every request writes its JSON access line (into
        the server's log file); pass ``**QUIET_LOGS`` to measure without it.
        """
        return self.env({"DATABASE_URL": database_url, "HOST": HOST, "PORT": str(port), **settings})


def comma_choices(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse ``type`` for a comma-separated subset of ``choices``."""

    def parse(value: str) -> list[str]:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names or set(names) - set(choices):
            msg = f"choose from {', '.join(choices)}; got {value!r}"
            raise argparse.ArgumentTypeError(msg)
        return names

    return parse


def main_with_cleanup(main: Callable[[], int], cleaned: str) -> None:
    """Run a benchmark's ``main``; on Ctrl-C say what was cleaned up and exit 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(f"interrupted: {cleaned}", file=sys.stderr)
        sys.exit(130)


_dirty_noted = False


def render(data: Mapping[str, Any], dst: Path, ref: str = "HEAD") -> Project:
    """Render the template at ``ref`` into ``dst`` (answers not in ``data`` take defaults).

    ``HEAD`` includes the working tree's uncommitted changes; a commit is rendered as it is.
    """
    global _dirty_noted  # say it once per run
    if ref == "HEAD" and not _dirty_noted and git("status", "--porcelain"):
        _dirty_noted = True
        print(f"note: {ROOT} has uncommitted changes; copier renders them too", flush=True)
    with time_limit(RENDER_TIMEOUT, "copier"):
        harness.render(dst, data, vcs_ref=ref)
    answers = yaml.safe_load((dst / ".copier-answers.yml").read_text())
    return Project(path=dst, answers=answers)


def sync(project: Project, python: str = "3.13") -> None:
    """``uv sync`` the project; make sure uvicorn's fast loop and parser are there."""
    harness.sync(project.path, python, timeout=SYNC_TIMEOUT)
    probe = "import uvloop, httptools"
    try:
        run([project.python, "-c", probe], timeout=60)
    except BenchError:
        print("note: uvloop/httptools missing from the project; installing them", flush=True)
        packages = ["uvloop", "httptools"]
        cmd = [UV, "pip", "install", "--python", project.python, *packages]
        run(cmd, env=tool_env(), timeout=SYNC_TIMEOUT)


@contextlib.contextmanager
def rendered_project(
    data: Mapping[str, Any], prefix: str = "bench-", ref: str = "HEAD"
) -> Iterator[Project]:
    """Render (at ``ref``) and sync into a temporary directory, removed on exit."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        project = render(data, Path(tmp) / "project", ref)
        sync(project)
        yield project


def previous_release() -> Release:
    """The newest release (``## X.Y.Z`` in CHANGELOG.md) whose commit is not HEAD's.

    Found as the template's update tests find releases (``tests/releases.py``).
    """
    head = git("rev-parse", "HEAD")
    older = [release for release in releases() if release.commit != head]
    if not older:
        raise BenchError("CHANGELOG.md names no release before HEAD")
    return older[-1]


def probe(
    project: Project, code: str, env: Mapping[str, str] | None = None, args: Sequence[str] = ()
) -> str:
    """Run ``code`` (with ``args``) with the project's Python in its directory (its ``.env``)."""
    cmd = [project.python, "-c", code, *args]
    return run(cmd, cwd=project.path, env=env or tool_env(), timeout=60).strip()


def alembic_upgrade(project: Project, database_url: str) -> None:
    env = project.env({"DATABASE_URL": database_url})
    cmd = [UV, "run", "--python", "3.13", "alembic", "upgrade", "heads"]
    run(cmd, cwd=project.path, env=env, timeout=DB_TIMEOUT)


# --- databases ------------------------------------------------------------------------------


def dbtool(project: Project, *args: str) -> str:
    """Run ``_dbtool.py`` with the project's Python (it has the backend's driver)."""
    return run([project.python, DBTOOL, *args], env=tool_env(), timeout=DB_TIMEOUT)


@contextlib.contextmanager
def temp_database(project: Project, workdir: Path, name: str) -> Iterator[str]:
    """A fresh, empty database for the project's backend; yields its URL, drops it on exit.

    SQLite: a file in ``workdir``. PostgreSQL/MySQL: ``name`` on the local server, dropped
    first if a previous run left it behind.
    """
    backend = str(project.answers["database"])
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{(workdir / f'{name}.db').resolve()}"
        return
    url = ADMIN_URLS[backend] + name
    dbtool(project, "create", url)
    try:
        yield url
    finally:
        try:
            dbtool(project, "drop", url)
        except BenchError as exc:
            print(f"warning: could not drop {url}: {exc}", file=sys.stderr, flush=True)


def seed_items(project: Project, database_url: str, rows: int) -> str:
    """Insert ``rows`` items with the raw driver; returns the tool's one-line summary."""
    return dbtool(project, "seed", database_url, str(rows)).strip()


def fill_items(project: Project, database_url: str, rows: int) -> str:
    """Up to ``rows`` items (ids 1..rows), generated by the server; the tool's summary."""
    return dbtool(project, "fill", database_url, str(rows)).strip()


# --- serving --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A server started by ``serve_app``: its base URL and port."""

    url: str
    port: int

    @property
    def pid(self) -> int:
        return server_pid(self.port)


@contextlib.contextmanager
def serve_app(
    project: Project, database_url: str, *, log: Path | None = None, **settings: str
) -> Iterator[Served]:
    """Serve ``python -m <package>`` as shipped (``Project.serving_env``) on a free port.

    The targets are for one uvicorn worker: BenchError if the defaults started more.
    """
    port = free_port()
    env = project.serving_env(database_url, port, **settings)
    cmd = [project.python, "-m", project.package]
    with serve(cmd, env, port, cwd=project.path, log=log) as url:
        served = Served(url, port)
        served.pid  # noqa: B018 - raises unless one process, without children, listens
        yield served


# --- load -----------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    """The figures of one wrk run."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_2xx_3xx: int
    output: str

    @property
    def errors(self) -> int:
        return self.socket_errors + self.non_2xx_3xx

    def figures(self) -> dict[str, Any]:
        """The figures for a report (and its JSON line)."""
        return {
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
            "requests": self.requests,
        }


def ensure_wrk() -> str:
    """The wrk binary; installs the Debian package when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("note: wrk not found; running apt-get update && apt-get install -y wrk", flush=True)
    run(["apt-get", "update"], timeout=600)
    run(
        ["apt-get", "install", "-y", "wrk"],
        timeout=600,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk is still missing after apt-get install")
    return found


def _latency_ms(output: str, percentile: int) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    if not match:
        raise BenchError(f"no {percentile}% latency in wrk output:\n{output}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Parse ``wrk --latency`` output."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if not rps or not total:
        raise BenchError(f"unexpected wrk output:\n{output}")
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        rps=float(rps.group(1)),
        p50_ms=_latency_ms(output, 50),
        p99_ms=_latency_ms(output, 99),
        socket_errors=sum(int(n) for n in sockets.groups()) if sockets else 0,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        output=output,
    )


def wrk(
    url: str,
    *,
    duration: float = 10.0,
    connections: int = 64,
    threads: int = 2,
    script: Path | None = None,
    script_args: Sequence[str] = (),
    warmup: float = 0.0,
    timeout: str | None = None,
) -> WrkResult:
    """Load ``url`` with wrk (after an unmeasured warm-up, if any) and return the figures.

    ``script_args`` reach the Lua script's ``init(args)``.
    """
    cmd = [ensure_wrk(), "-t", str(threads), "-c", str(connections), "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    if timeout is not None:
        cmd += ["--timeout", timeout]
    tail = ["--", *script_args] if script_args else []
    if warmup > 0:
        run([*cmd, "-d", f"{warmup:g}s", url, *tail], timeout=warmup + 60)
    output = run([*cmd, "-d", f"{duration:g}s", url, *tail], timeout=duration + 60)
    return parse_wrk(output)


def add_load_arguments(parser: argparse.ArgumentParser, duration: int = 10) -> None:
    """``--duration`` and ``--connections`` of every wrk load, and ``--runs``."""
    parser.add_argument("--duration", default=duration, type=int, help="measured seconds per load")
    parser.add_argument("--connections", default=64, type=int, help="wrk connections")
    add_runs_argument(parser)


def write_suffixes(path: Path, suffixes: Iterable[str]) -> Path:
    """A file for ``load(..., suffixes=path)``: one path suffix a line."""
    path.write_text("".join(f"{suffix}\n" for suffix in suffixes))
    return path


def load(
    url: str,
    args: argparse.Namespace,
    *,
    suffixes: Path | None = None,
    timeout: str | None = None,
) -> WrkResult:
    """A warm-up, then the measured wrk run, as ``add_load_arguments`` configured them.

    ``suffixes``: a file (``write_suffixes``) of which each request appends a random line to
    ``url`` (``random_paths.lua``). ``timeout``: wrk's per-request timeout (its default, 2 s,
    drops slower answers from the latency figures and counts them as socket errors).
    """
    return wrk(
        url,
        duration=args.duration,
        connections=args.connections,
        threads=THREADS,
        script=None if suffixes is None else RANDOM_PATHS,
        script_args=() if suffixes is None else [str(suffixes)],
        warmup=WARMUP_SECONDS,
        timeout=timeout,
    )


# --- repeated runs and the report -----------------------------------------------------------

Figures = dict[str, Any]


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return number


def add_runs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--runs",
        default=RUNS,
        type=_positive,
        help=f"repeat the whole measurement; the median of each figure counts (default {RUNS})",
    )


def _median(values: Sequence[Any]) -> Any:
    """The median of numbers (None if a run had none: it could not measure the figure); a
    check (bool) holds if it held every time; other values: the first run's.
    """
    first = values[0]
    if isinstance(first, Mapping):
        return median_figures(values)
    if isinstance(first, bool):
        return all(values)
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if numbers and None in values:
        return None
    if numbers and isinstance(first, int | float):
        median = statistics.median(numbers)
        if all(isinstance(v, int) for v in numbers) and median == int(median):
            return int(median)
        return round(median, 3)
    if isinstance(first, list) and all(
        isinstance(v, list) and len(v) == len(first) for v in values
    ):
        return [_median(column) for column in zip(*values, strict=True)]
    return first


def median_figures(runs: Sequence[Mapping[str, Any]]) -> Figures:
    """Figure by figure (nested mappings too), the median over ``runs``."""
    keys = dict.fromkeys(key for run in runs for key in run)
    return {key: _median([run[key] for run in runs if key in run]) for key in keys}


def repeat(runs: int, measure: Callable[[int], Figures]) -> Figures:
    """Call ``measure(number)`` ``runs`` times: ``{"median": ..., "runs": [...]}``.

    A ratio belongs in each run's figures, both sides measured in that run; its median is
    then taken like any other figure's (not a ratio of medians).
    """
    figures = []
    for number in range(1, runs + 1):
        print(f"-- run {number}/{runs}", flush=True)
        figures.append(measure(number))
    return {"median": median_figures(figures), "runs": figures}


def report_load(when: str) -> Figures:
    """Print the load averages and whether the machine is quiet; the figures for the JSON."""
    averages = [round(value, 2) for value in os.getloadavg()]
    cpus = os.cpu_count() or 1
    state = "quiet" if averages[0] < QUIET_LOAD_PER_CPU * cpus else "loaded"
    shown = ", ".join(f"{value:.2f}" for value in averages)
    print(f"load average {when}: {shown} on {cpus} CPUs ({state})", flush=True)
    return {"load_average": averages, "machine": state}


def ranged(result: Figures, *path: str, digits: int = 3) -> str:
    """The median of a figure and, in brackets, its range over the runs of ``repeat``."""

    def pick(figures: Any) -> float | None:
        for key in path:
            figures = figures[key]
        return None if figures is None else float(figures)

    median = pick(result["median"])
    values = [value for value in map(pick, result["runs"]) if value is not None]
    if median is None:
        return "n/a"
    if len(values) == 1:
        return f"{median:.{digits}f}"
    return f"{median:.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def for_each_backend(
    backends: Sequence[str],
    measure: Callable[[str], Figures],
    report: Callable[[str, Figures], None],
) -> dict[str, Figures]:
    """``measure`` each backend and ``report`` its figures: ``{"backends": {name: figures}}``.

    A failed backend is noted (its error in place of its figures) and the others go on.
    """
    results: dict[str, Figures] = {}
    for backend in backends:
        try:
            results[backend] = measure(backend)
        except BenchError as exc:
            print(f"!! {backend} failed: {exc}", file=sys.stderr, flush=True)
            results[backend] = {"error": str(exc).splitlines()[0]}
            continue
        report(backend, results[backend])
    return {"backends": results}


def _backend_failed(result: Figures) -> bool:
    return any("error" in figures for figures in result.get("backends", {}).values())


# How the arguments every bench shares are named in its JSON line.
_ARGUMENT_FIGURES = {"connections": "connections", "duration": "duration_s", "runs": "run_count"}


def run_bench(
    name: str,
    args: argparse.Namespace,
    measure: Callable[[], Figures],
    *,
    targets: Mapping[str, Any],
    report: Callable[[Figures], None] | None = None,
    failed: Callable[[Figures], bool] = _backend_failed,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """A bench's ``main`` after its arguments: the load average, ``measure``, the load
    average again, ``report`` (the human table), and the last line, one JSON object
    ``{name: {arguments, targets, extra, load averages, figures}}``.

    Exit status 1 when ``measure`` raised BenchError (the JSON says why) or ``failed`` says
    so (by default: a backend of ``{"backends": ...}`` has an error).
    """
    interrupt_on_sigterm()
    before = report_load("before")
    try:
        result = measure()
    except BenchError as exc:
        print(f"!! {name} failed: {exc}", file=sys.stderr, flush=True)
        print(json.dumps({name: {"error": str(exc).splitlines()[0]}}))
        return 1
    after = report_load("after")
    if report is not None:
        report(result)
    shared = {key: getattr(args, arg) for arg, key in _ARGUMENT_FIGURES.items() if arg in args}
    summary = {**shared, "targets": dict(targets), **(extra or {}), "before": before}
    print(json.dumps({name: {**summary, "after": after, **result}}))
    return 1 if failed(result) else 0


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def check_line(label: str, figure: str, target: str, ok: bool) -> str:
    """One report line: the figure, its target next to it, and whether it is met."""
    return f"  {label:<30}{figure:>22}   target {target:<16}{mark(ok)}"


# --- processes seen through /proc -----------------------------------------------------------


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    inodes.add(inode)
    return inodes


def listening_pids(port: int) -> list[int]:
    """The processes holding a socket that listens on TCP ``port``: the ones that accept."""
    targets = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    pids: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue  # gone meanwhile, or not ours to see
        if links & targets:
            pids.append(int(proc.name))
    return sorted(pids)


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (all of its threads')."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children += [int(n) for n in (task / "children").read_text().split()]
    return sorted(children)


def server_pid(port: int) -> int:
    """The one process that listens on ``port`` and has no child processes, or BenchError.

    With one worker uvicorn serves in the process it was started as; several processes on
    the socket (or children) would mean workers, whose memory one pid does not show.
    """
    pids = listening_pids(port)
    if len(pids) != 1:
        raise BenchError(f"expected one process listening on port {port}, found {pids}")
    children = child_pids(pids[0])
    if children:
        raise BenchError(f"the server on port {port} (pid {pids[0]}) has children {children}")
    return pids[0]


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status``, e.g. VmHWM (peak RSS) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise BenchError(f"no {field} in /proc/{pid}/status")


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU time used so far by ``pid`` (all its threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def proc_cmdline(pid: int) -> str:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
