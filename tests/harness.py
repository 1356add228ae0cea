"""Render the template and run a rendered project's own tools, for the template's tests."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import copier
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATABASES = ("sqlite", "postgresql", "mysql")
FEATURES = ("http_client", "uploads", "background_tasks", "observability")
PYTHONS = ("3.11", "3.12", "3.13")
BIN = Path(sys.executable).parent  # the template's dev environment: uv, ruff, copier

# Files each feature renders; none of them may exist when the feature is off.
FEATURE_FILES = {
    "http_client": [
        "src/{pkg}/http.py",
        "src/{pkg}/routers/upstream.py",
        "tests/test_upstream.py",
    ],
    "uploads": [
        "src/{pkg}/storage.py",
        "src/{pkg}/upload_stream.py",
        "src/{pkg}/routers/uploads.py",
        "tests/test_uploads.py",
        "migrations/versions/0002_uploads.py",
    ],
    "background_tasks": [
        "src/{pkg}/jobs.py",
        "src/{pkg}/routers/tasks.py",
        "tests/test_tasks.py",
        "migrations/versions/0003_jobs.py",
    ],
    "observability": [
        "src/{pkg}/observability.py",
        "src/{pkg}/routers/metrics.py",
        "tests/test_observability.py",
    ],
}
# Words that must not appear anywhere in a project rendered without the feature.
FEATURE_TRACES = {
    "http_client": ["upstream", "http_client", "HttpClient"],
    "uploads": ["upload", "aiofiles", "multipart"],
    "background_tasks": ["JobRunner", "job_runner", "jobs.", "Job(", "word_count", "tasks"],
    "observability": ["prometheus", "opentelemetry", "metrics", "otlp", "tracer"],
}
DRIVERS = {"sqlite": "aiosqlite", "postgresql": "asyncpg", "mysql": "asyncmy"}
COMMON_FILES = [
    ".copier-answers.yml",
    ".dockerignore",
    ".env",
    ".env.example",
    ".github/workflows/ci.yml",
    ".gitignore",
    ".pre-commit-config.yaml",
    ".python-version",
    "README.md",
    "Dockerfile",
    "alembic.ini",
    "compose.yaml",
    "pyproject.toml",
    "schemathesis.toml",
    "migrations/env.py",
    "migrations/script.py.mako",
    "migrations/versions/0001_items.py",
    "src/{pkg}/__init__.py",
    "src/{pkg}/__main__.py",
    "src/{pkg}/app.py",
    "src/{pkg}/db.py",
    "src/{pkg}/deps.py",
    "src/{pkg}/errors.py",
    "src/{pkg}/features.py",
    "src/{pkg}/logs.py",
    "src/{pkg}/middleware.py",
    "src/{pkg}/models.py",
    "src/{pkg}/pagination.py",
    "src/{pkg}/schemas.py",
    "src/{pkg}/settings.py",
    "src/{pkg}/state.py",
    "src/{pkg}/routers/health.py",
    "src/{pkg}/routers/items.py",
    "tests/conftest.py",
    "tests/databases.py",
    "tests/test_errors.py",
    "tests/test_health.py",
    "tests/contract_hooks.py",
    "tests/test_contract.py",
    "tests/test_items.py",
    "tests/test_logging.py",
    "tests/test_migrations.py",
    "tests/test_security.py",
    "tests/test_settings.py",
    "tests/test_transactions.py",
]
SERVERS = {
    "postgresql": ("127.0.0.1", 5432, "PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth)"),
    "mysql": ("127.0.0.1", 3306, "MariaDB/MySQL on 127.0.0.1:3306 (user root, empty password)"),
    "redis": ("127.0.0.1", 6379, "Redis on 127.0.0.1:6379"),
}
LEFTOVER_JINJA = re.compile(r"(?<!\$)\{\{|\{%|%\}|\{#|#\}")


@dataclass(frozen=True)
class Combo:
    database: str
    features: tuple[str, ...]
    python: str = "3.13"
    queue: str = "inprocess"

    @property
    def id(self) -> str:
        feats = "+".join(self.features) or "no-features"
        queue = "-redis-queue" if self.redis_queue else ""
        version = "" if self.python == "3.13" else f"-py{self.python}"
        return f"{self.database}-{feats}{queue}{version}"

    @property
    def redis_queue(self) -> bool:
        return "background_tasks" in self.features and self.queue == "redis"

    @property
    def package(self) -> str:
        """A package name of its own, so databases on a shared server can be told apart."""
        return "svc_" + hashlib.sha1(self.id.encode()).hexdigest()[:8]

    def data(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "features": list(self.features),
            "python_version": self.python,
            "package_name": self.package,
            "task_queue": self.queue,
        }


def feature_subsets() -> list[tuple[str, ...]]:
    return [c for n in range(len(FEATURES) + 1) for c in combinations(FEATURES, n)]


ALL_COMBOS = [Combo(db, feats) for db in DATABASES for feats in feature_subsets()] + [
    Combo(db, feats, queue="redis")
    for db in DATABASES
    for feats in feature_subsets()
    if "background_tasks" in feats and (feats == FEATURES or db == "sqlite")
]
# Files of the Redis queue; none of them without it.
QUEUE_FILES = ["src/{pkg}/queue.py", "src/{pkg}/worker.py"]
# The in-process runner: rendered with background tasks unless the Redis queue runs them.
INPROCESS_FILES = ["src/{pkg}/runner.py"]
QUEUE_TRACES = ["taskiq", "redis", "queue_name", "worker.py"]


def tool_env() -> dict[str, str]:
    """Environment for uv and the rendered tools: every pyenv Python findable, no downloads."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    pyenv_versions = Path(env.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_versions.is_dir() and not env.get("PYENV_VERSION"):
        env["PYENV_VERSION"] = ":".join(sorted(p.name for p in pyenv_versions.iterdir()))
    env.setdefault("UV_PYTHON_DOWNLOADS", "never" if pyenv_versions.is_dir() else "automatic")
    env["UV_NO_PROGRESS"] = "1"
    return env


def require_server(name: str) -> None:
    """Skip (on a developer machine) or fail (under CI) when a server is not reachable."""
    host, port, what = SERVERS[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        message = f"{what} is not reachable ({exc}); start it to run these tests"
    if os.environ.get("CI"):
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)


def render(
    dst: Path,
    data: Mapping[str, Any] | None = None,
    *,
    src: Path = ROOT,
    vcs_ref: str = "HEAD",
) -> Path:
    """``copier copy --defaults`` of the template into ``dst`` (no --trust)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DirtyLocalWarning while developing the template
        copier.run_copy(
            str(src),
            str(dst),
            data=dict(data or {}),
            defaults=True,
            vcs_ref=vcs_ref,
            quiet=True,
            unsafe=False,
        )
    return dst


def rendered_files(project: Path) -> list[Path]:
    skip = {".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__"}
    return [
        p
        for p in project.rglob("*")
        if p.is_file() and not skip.intersection(p.relative_to(project).parts)
    ]


def answers(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return loaded


@dataclass
class Timings:
    """Seconds per step, reported in the test summary (``record`` is pytest's record_property)."""

    steps: dict[str, float] = field(default_factory=dict)
    record: Callable[[str, object], None] | None = None

    def add(self, step: str, seconds: float) -> None:
        self.steps[step] = round(self.steps.get(step, 0.0) + seconds, 2)
        if self.record is not None:  # during the test's call: lands on its report
            self.record("timings", dict(self.steps))


def run(
    cmd: Iterable[str | os.PathLike[str]],
    cwd: Path,
    *,
    timings: Timings | None = None,
    step: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure (unless ``check`` is off) fail the test with its output."""
    args = [str(c) for c in cmd]
    started = time.perf_counter()
    result = subprocess.run(
        args,
        cwd=cwd,
        env={**tool_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if timings is not None:
        timings.add(step or args[0], time.perf_counter() - started)
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-4000:]}",
            pytrace=False,
        )
    return result


def uv(*args: str) -> list[str]:
    return [str(BIN / "uv"), *args]


def sync(project: Path, python: str, timings: Timings | None = None) -> None:
    run(uv("sync", "--quiet", "--python", python), project, timings=timings, step="uv sync")


def lint(project: Path, mypy_cache: Path, timings: Timings | None = None) -> None:
    """ruff check, ruff format --check and mypy --strict, with the project's own config."""
    run(uv("run", "--no-sync", "ruff", "check", "."), project, timings=timings, step="ruff")
    run(
        uv("run", "--no-sync", "ruff", "format", "--check", "."),
        project,
        timings=timings,
        step="ruff",
    )
    run(
        uv("run", "--no-sync", "mypy", "--cache-dir", str(mypy_cache)),
        project,
        timings=timings,
        step="mypy",
    )


def run_suite(
    project: Path, timings: Timings | None = None, *args: str
) -> subprocess.CompletedProcess[str]:
    """The rendered project's own test command; returns the completed run."""
    return run(
        uv("run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", *args),
        project,
        timings=timings,
        step="suite",
    )


SERVER_SQL = """
import asyncio, sys
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

async def main() -> None:
    url, statement = sys.argv[1], sys.argv[2]
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with engine.connect() as connection:
        result = await connection.execute(text(statement))
        if result.returns_rows:
            for (name,) in result:
                print(name)
    await engine.dispose()

asyncio.run(main())
"""
SERVER_ADMIN = {
    "postgresql": (
        "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
        "SELECT datname FROM pg_database",
    ),
    "mysql": ("mysql+asyncmy://root@127.0.0.1:3306/mysql", "SHOW DATABASES"),
}


REDIS_KEYS = """
import asyncio, sys
import redis.asyncio as redis

async def main() -> None:
    client = redis.from_url(sys.argv[1])
    keys = [k.decode() async for k in client.scan_iter(match=sys.argv[2] + "*")]
    print("\\n".join(keys))
    await client.aclose()

asyncio.run(main())
"""


def redis_keys(project: Path, prefix: str, url: str = "redis://127.0.0.1:6379/0") -> list[str]:
    """Keys on the local Redis starting with ``prefix`` (via the project's venv)."""
    result = run(uv("run", "--no-sync", "python", "-c", REDIS_KEYS, url, prefix), project)
    return sorted(result.stdout.split())


def server_sql(project: Path, database: str, statement: str) -> list[str]:
    """Run one statement as the local server's admin (via the project's venv); its rows."""
    url, _ = SERVER_ADMIN[database]
    result = run(uv("run", "--no-sync", "python", "-c", SERVER_SQL, url, statement), project)
    return result.stdout.split()


def server_databases(project: Path, database: str, prefix: str) -> list[str]:
    """Databases on the local server whose name starts with ``prefix``."""
    names = server_sql(project, database, SERVER_ADMIN[database][1])
    return sorted(name for name in names if name.startswith(prefix))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        loaded: dict[str, object] = json.load(response)
        return loaded


def wait_ready(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            http("GET", url)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def check_deploy_files(project: Path, timings: Timings | None = None) -> None:
    """hadolint the Dockerfile; validate compose and CI against their schemas; zizmor the CI."""
    workflow = project / ".github/workflows/ci.yml"
    steps = [
        [BIN / "hadolint", project / "Dockerfile"],
        [
            BIN / "check-jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            project / "compose.yaml",
        ],
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", workflow],
        [BIN / "zizmor", "--offline", "--no-progress", workflow],
    ]
    for cmd in steps:
        run(cmd, project, timings=timings, step="deploy files")


def passed_count(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"(\d+) passed", result.stdout)
    return int(match.group(1)) if match else 0
