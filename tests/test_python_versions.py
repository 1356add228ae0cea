"""The all-features project on the lowest and the highest offered Python."""

from pathlib import Path

import pytest

from .harness import FEATURES, PYTHONS, Combo, Timings, lint, passed_count, render, run_suite, sync


@pytest.mark.parametrize("python", [PYTHONS[0], PYTHONS[-1]])
def test_all_features_on_python(
    python: str, tmp_path: Path, mypy_cache: Path, timings: Timings
) -> None:
    combo = Combo("sqlite", FEATURES, python)
    project = render(tmp_path / "project", combo.data())
    sync(project, python, timings)
    version = (project / ".venv/pyvenv.cfg").read_text()
    assert f"version_info = {python}." in version or f"version = {python}." in version
    lint(project, mypy_cache, timings)
    assert passed_count(run_suite(project, timings)) > 0
