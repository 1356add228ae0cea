"""Shared fixtures of the template's tests: one snapshot of the template and one render per
combination for the whole run, the S3 server, the mypy cache, the order heavy tests run in,
progress lines for long runs, and a summary of per-combination timings."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from harness import SNAPSHOT_ENV, StepFailed, s3_server, snapshot

from .checks import HEAVY, RENDERS_ENV, Renders, Timings, cost_of


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A failed command fails its test with the command and its output, not a traceback."""
    try:
        return (yield)
    except StepFailed as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


RUN_STATE = pytest.StashKey[contextlib.ExitStack]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--exhaustive",
        action="store_true",
        help="also run the tests marked exhaustive (the weekly tier: every feature alone on "
        "every database, the defaults on every Python)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Once per run, in xdist's controller before its workers start (they inherit the
    environment): a snapshot of the template's work tree that every render of HEAD reads,
    a directory where each combination is rendered once for every test module and worker
    (``Renders``), and SeaweedFS for the ``upload_storage=s3`` suites unless one runs."""
    if hasattr(config, "workerinput"):
        return
    stack = contextlib.ExitStack()
    config.stash[RUN_STATE] = stack
    run_dir = Path(tempfile.mkdtemp(prefix="template-tests-"))
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
    for name, value in {
        SNAPSHOT_ENV: snapshot(run_dir / "template"),
        RENDERS_ENV: run_dir / "renders",
    }.items():
        stack.enter_context(_environ(name, str(value)))
    try:
        stack.enter_context(s3_server(Path(tempfile.mkdtemp(prefix="template-s3-"))))
    except (OSError, StepFailed) as exc:  # the S3 tests then skip or fail, saying why
        warnings.warn(f"could not start SeaweedFS: {exc}", stacklevel=1)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Generator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(RUN_STATE, None)
    if stack is not None:
        stack.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``exhaustive`` only with ``--exhaustive``. Then heaviest first (``COSTS``,
    seconds measured on 2 cores), shared out between the xdist workers: ``--dist worksteal``
    gives each worker one contiguous share of the list and lets an idle worker take the tail
    of another's, so each share starts with its heavy tests (the one with the least work so
    far takes the next) and ends with cheap ones."""
    if not config.getoption("--exhaustive"):
        left_out = [item for item in items if item.get_closest_marker("exhaustive")]
        if left_out:
            config.hook.pytest_deselected(items=left_out)
            items[:] = [item for item in items if not item.get_closest_marker("exhaustive")]
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    ordered = sorted(items, key=lambda item: cost_of(item.nodeid), reverse=True)
    sizes, left = [], len(ordered)
    for index in range(workers):  # the shares xdist's first distribution hands out
        sizes.append(left // (workers - index))
        left -= sizes[-1]
    shares: list[list[pytest.Item]] = [[] for _ in sizes]
    totals = [0.0 for _ in sizes]
    for item in ordered:
        open_shares = [i for i, share in enumerate(shares) if len(share) < sizes[i]]
        share = min(open_shares, key=lambda i: totals[i])
        shares[share].append(item)
        totals[share] += cost_of(item.nodeid)
    items[:] = [item for share in shares for item in share]


@pytest.fixture(scope="session")
def renders() -> Renders:
    return Renders.from_environment()


@pytest.fixture(scope="session")
def mypy_cache(worker_id: str) -> Path:
    """One mypy cache per worker, kept between runs (``~/.cache``): third-party packages are
    analysed once, not per project and run. mypy checks every cached module against its
    source, so a stale entry is re-analysed, never trusted."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = base / "fastapi-async-template-tests" / f"mypy-{worker_id}"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def timings(record_property: Callable[[str, object], None]) -> Timings:
    return Timings(record=record_property)


# --- progress of long runs --------------------------------------------------------------------


class Progress:
    """Lines in the controller's output as heavy tests start and end: which build it is, how
    many are done and left, and the elapsed time (-v alone shows only percentages)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.heavy: set[str] = set()
        self.started: dict[str, float] = {}
        self.done: set[str] = set()
        self.began = time.monotonic()

    def write(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"[{time.monotonic() - self.began:6.0f}s] {text}")

    def count(self, ids: list[str]) -> None:
        if not self.heavy:
            self.heavy = {nodeid for nodeid in ids if cost_of(nodeid) >= HEAVY}
            if self.heavy:
                self.write(f"{len(self.heavy)} builds, {len(ids)} tests in all")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.count([item.nodeid for item in items])  # without xdist

    def pytest_xdist_node_collection_finished(self, node: object, ids: list[str]) -> None:
        del node
        self.count(ids)  # the controller learns the (deselected) ids from its workers

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if nodeid in self.heavy and nodeid not in self.started:
            self.started[nodeid] = time.monotonic()
            self.write(f"build {len(self.started)}/{len(self.heavy)} started: {nodeid}")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        name = report.nodeid
        if name not in self.started or name in self.done or report.when != "teardown":
            return
        self.done.add(name)
        seconds = time.monotonic() - self.started[name]
        left = len(self.heavy) - len(self.done)
        self.write(f"build done in {seconds:.0f}s, {left} left: {name}")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    config = session.config
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Progress(config), "template-progress")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    rows = []
    for report in terminalreporter.stats.get("passed", []):
        props = dict(report.user_properties)
        if "timings" in props and report.when == "call":
            rows.append((report.nodeid.split("::")[-1], props["timings"]))
    if not rows:
        return
    terminalreporter.section("seconds per step of each rendered project")
    for name, steps in sorted(rows):
        parts = ", ".join(f"{step} {seconds:.1f}" for step, seconds in steps.items())
        terminalreporter.write_line(f"{name}: {parts}")
