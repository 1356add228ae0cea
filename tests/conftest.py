"""Shared fixtures of the template's tests, and a summary of per-combination timings."""

from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from harness import StepFailed

from .checks import Timings


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """A failed command fails its test with the command and its output, not a traceback."""
    try:
        return (yield)
    except StepFailed as exc:
        failure = str(exc)
    pytest.fail(failure, pytrace=False)


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
