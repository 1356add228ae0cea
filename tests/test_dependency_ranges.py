"""Honest dependency ranges: the all-features project passes its suite resolved to the lowest
direct versions its pyproject allows and to the latest ones."""

from pathlib import Path

import pytest

from harness import FEATURES, Combo, render, run, sync, uv

from .checks import Timings, passed_count, require_server, run_suite

CASES = [
    (db, resolution)
    for db in ("sqlite", "postgresql")
    for resolution in ("lowest-direct", "highest")
]


@pytest.mark.parametrize(("database", "resolution"), CASES, ids=lambda v: str(v))
def test_suite_passes_at_both_ends_of_the_ranges(
    database: str, resolution: str, tmp_path: Path, timings: Timings
) -> None:
    if database != "sqlite":
        require_server(database)
    combo = Combo(database, FEATURES)
    project = render(tmp_path / "project", combo.data())
    with timings.step("uv sync"):
        sync(project, combo.python, "--resolution", resolution, "--upgrade")
    listed = run(uv("pip", "list", "--format", "freeze"), project).stdout
    versions = dict(line.split("==", 1) for line in listed.split() if "==" in line)
    lower_bound = "0.165.0" if resolution == "lowest-direct" else None
    if lower_bound:
        assert versions["fastapi"] == lower_bound, "not resolved to the lowest direct versions"
    assert passed_count(run_suite(project, timings)) > 0
