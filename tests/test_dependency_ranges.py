"""Honest dependency ranges: the all-features project passes its suite resolved to the lowest
direct versions its pyproject allows and to the latest ones."""

from pathlib import Path

import pytest

from harness import FEATURES, Combo, run, sync, uv

from .checks import (
    Renders,
    Timings,
    own_test_database,
    passed_count,
    require_server,
    run_suite,
)

CASES = [
    (db, resolution)
    for db in ("sqlite", "postgresql")
    for resolution in ("lowest-direct", "highest")
]


@pytest.mark.slow
@pytest.mark.parametrize(("database", "resolution"), CASES, ids=lambda v: str(v))
def test_suite_passes_at_both_ends_of_the_ranges(
    database: str, resolution: str, renders: Renders, tmp_path: Path, timings: Timings
) -> None:
    if database != "sqlite":
        require_server(database)
    combo = Combo(database, FEATURES)
    with timings.step("uv sync"):
        if resolution == "highest":  # what a plain `uv sync` without a lock file resolves
            project = renders.installed(combo)
        else:
            project = renders.copy(combo, tmp_path / "project")
            sync(project, combo.python, "--resolution", resolution, "--upgrade")
    listed = run(uv("pip", "list", "--format", "freeze"), project).stdout
    versions = dict(line.split("==", 1) for line in listed.split() if "==" in line)
    lower_bound = "0.165.0" if resolution == "lowest-direct" else None
    if lower_bound:
        assert versions["fastapi"] == lower_bound, "not resolved to the lowest direct versions"
    env: dict[str, str] = {}
    if database != "sqlite":  # other tests run suites of the same package meanwhile
        env, _ = own_test_database(database, combo.package, resolution.split("-")[0])
    assert passed_count(run_suite(project, timings, env=env)) > 0
