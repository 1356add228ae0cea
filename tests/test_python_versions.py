"""The all-features project on the lowest and the highest offered Python, on every backend."""

from pathlib import Path

import pytest

from .harness import (
    FEATURES,
    PYTHONS,
    Combo,
    Timings,
    lint,
    passed_count,
    render,
    require_server,
    run_suite,
    sync,
)

CASES = [
    ("sqlite", PYTHONS[0]),
    ("sqlite", PYTHONS[-1]),
    ("postgresql", PYTHONS[0]),
    ("mysql", PYTHONS[0]),
]


@pytest.mark.parametrize(("database", "python"), CASES, ids=lambda v: str(v))
def test_all_features_on_python(
    database: str, python: str, tmp_path: Path, mypy_cache: Path, timings: Timings
) -> None:
    if database != "sqlite":
        require_server(database)
    combo = Combo(database, FEATURES, python)
    project = render(tmp_path / "project", combo.data())
    sync(project, python, timings)
    config = (project / ".venv/pyvenv.cfg").read_text()
    assert f"version_info = {python}." in config or f"version = {python}." in config
    lint(project, mypy_cache, timings)
    assert passed_count(run_suite(project, timings)) > 0
