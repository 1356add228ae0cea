"""Shared fixtures of the template's tests, and a summary of per-combination timings."""

import contextlib
import tempfile
import warnings
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from harness import StepFailed, s3_server

from .checks import Timings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A failed command fails its test with the command and its output, not a traceback."""
    try:
        return (yield)
    except StepFailed as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


S3_SERVER = pytest.StashKey[contextlib.ExitStack]()


def pytest_configure(config: pytest.Config) -> None:
    """Renders with ``upload_storage=s3`` run their suites against SeaweedFS on loopback,
    started here once (in xdist's controller, before its workers) unless one is running."""
    if hasattr(config, "workerinput"):
        return
    stack = contextlib.ExitStack()
    config.stash[S3_SERVER] = stack
    try:
        stack.enter_context(s3_server(Path(tempfile.mkdtemp(prefix="template-s3-"))))
    except (OSError, StepFailed) as exc:  # the S3 tests then skip or fail, saying why
        warnings.warn(f"could not start SeaweedFS: {exc}", stacklevel=1)


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(S3_SERVER, None)
    if stack is not None:
        stack.close()


@pytest.fixture(scope="session")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache per worker: third-party stubs are analysed once, not per project."""
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.fixture
def timings(record_property: Callable[[str, object], None]) -> Timings:
    return Timings(record=record_property)


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
