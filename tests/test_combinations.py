"""Every option combination rendered and checked; a pairwise covering set of them built fully.

Cheap checks, on every combination (``harness.all_combos``): render, files present and
absent, no trace of what is off, answers and secret, ruff check and ruff format --check
(the dev environment's ruff: no ``uv sync``). Full checks, on the combinations of
``harness.covering_combos`` (every pair of option values appears in at least one of them,
the defaults and the everything-off render among them): the above, plus the deploy files,
``uv sync``, the project's own ruff and ``mypy --strict``, and its suite in a random order
with added job tests, its contract test included, against the real local servers.
"""

import random
from collections.abc import Iterable
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import (
    DEFAULTS,
    EVERYTHING_OFF,
    FACTORS,
    FEATURES,
    PYTHONS,
    QUEUES,
    ROOT,
    STORAGES,
    Combo,
    all_combos,
    answers,
    covering_combos,
    render,
    rendered_files,
    sync,
    value_pairs,
)

from .checks import (
    COMMON_FILES,
    DRIVERS,
    FEATURE_FILES,
    FEATURE_TRACES,
    FORM_FEATURES,
    INPROCESS_FILES,
    LEFTOVER_JINJA,
    LOCAL_STORAGE_FILES,
    LOCAL_STORAGE_TRACES,
    QUEUE_FILES,
    QUEUE_TRACES,
    S3_FILES,
    S3_TRACES,
    Renders,
    Timings,
    check_deploy_files,
    lint,
    own_test_database,
    passed_count,
    redis_keys,
    require_server,
    ruff,
    run_suite,
    server_databases,
)


def check_files(project: Path, combo: Combo) -> None:
    expected = set(COMMON_FILES)
    absent: set[str] = set()
    for feature, files in FEATURE_FILES.items():
        (expected if feature in combo.features else absent).update(files)
    (expected if combo.redis_queue else absent).update(QUEUE_FILES)
    in_process = "background_tasks" in combo.features and not combo.redis_queue
    (expected if in_process else absent).update(INPROCESS_FILES)
    (expected if combo.s3_uploads else absent).update(S3_FILES)
    local = "uploads" in combo.features and not combo.s3_uploads
    (expected if local else absent).update(LOCAL_STORAGE_FILES)
    for name in sorted(expected):
        assert (project / name.format(pkg=combo.package)).is_file(), f"missing {name}"
    for name in sorted(absent):
        assert not (project / name.format(pkg=combo.package)).exists(), (
            f"{name} rendered though off"
        )


# What users write: tests that start a background job and return without waiting for it.
# Each rendered suite with jobs runs with these added, in a random order, and every other
# test must pass regardless (issue: 10-16 failures on a shared connection before 0.5.0).
USER_JOB_TESTS = '''"""Added by the template's tests: start jobs and do not wait for them."""

import httpx2
import pytest


@pytest.mark.parametrize("pause", [0.0, 0.01, 0.05])
async def test_start_a_job_and_leave(client: httpx2.AsyncClient, pause: float) -> None:
    item = await client.post("/items", json={"name": f"left behind {pause}"})
    assert item.status_code == 201
    body = {"text": "a b c", "delay_seconds": pause}
    for _ in range(3):
        assert (await client.post("/tasks/word-count", json=body)).status_code == 202
'''


def check_no_traces(project: Path, combo: Combo) -> None:
    """A feature that is off leaves no word of itself; other backends' drivers neither."""
    banned = [word for f in FEATURES if f not in combo.features for word in FEATURE_TRACES[f]]
    if set(FORM_FEATURES) & set(combo.features):
        banned = [word for word in banned if word != "multipart"]  # python-multipart: forms too
    banned += [driver for db, driver in DRIVERS.items() if db != combo.database]
    if not combo.redis_queue:
        banned += QUEUE_TRACES
    if not combo.s3_uploads:
        banned += S3_TRACES
    if "uploads" in combo.features and combo.s3_uploads:
        banned += LOCAL_STORAGE_TRACES
    for path in rendered_files(project):
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(project)
        assert not LEFTOVER_JINJA.search(text), f"leftover Jinja in {rel}"
        if path.suffix == ".lock":
            continue
        lowered = text.lower()
        for word in banned:
            assert word.lower() not in lowered, f"{word!r} left in {rel}"
    assert DRIVERS[combo.database] in (project / "pyproject.toml").read_text()


def check_answers(project: Path, combo: Combo) -> None:
    recorded = answers(project)
    for key, value in combo.data().items():
        if key == "task_queue" and "background_tasks" not in combo.features:
            assert key not in recorded  # not asked without background tasks
            continue
        if key == "upload_storage" and "uploads" not in combo.features:
            assert key not in recorded  # not asked without uploads
            continue
        assert recorded[key] == value, key
    assert recorded["_src_path"]
    assert "secret_key" not in recorded
    env = (project / ".env").read_text()
    key = f"{combo.package.upper()}_SECRET_KEY="
    assert key in env
    secret = env.split(key)[1].split()[0]
    assert len(secret) >= 32
    for path in rendered_files(project):
        if path.name != ".env":
            assert secret not in path.read_text(encoding="utf-8"), f"secret leaked to {path}"


def check_render(project: Path, combo: Combo) -> None:
    check_files(project, combo)
    check_no_traces(project, combo)
    check_answers(project, combo)


def tiered(combos: Iterable[Combo], quick: Iterable[Combo]) -> list[Any]:
    """``combos`` as parameters; those not in ``quick`` marked slow (full suite only)."""
    fast = set(quick)
    slow = pytest.mark.slow
    return [pytest.param(c, id=c.id, marks=() if c in fast else slow) for c in combos]


@pytest.mark.parametrize("combo", tiered(all_combos(), quick=covering_combos()))
def test_render(combo: Combo, renders: Renders) -> None:
    """Cheap checks: what the render holds and ruff, without installing the project."""
    project = renders.get(combo)
    check_render(project, combo)
    ruff(project)


def exhaustive_combos() -> list[Combo]:
    """What the weekly tier adds to the covering set: each feature alone on each database
    (in each of its storages and queues), so that no feature works only because another one
    is on, and the defaults on every Python."""
    alone = [
        Combo(database, (feature,), queue=queue, storage=storage)
        for database in FACTORS["database"]
        for feature in FEATURES
        for queue in (QUEUES if feature == "background_tasks" else QUEUES[:1])
        for storage in (STORAGES if feature == "uploads" else STORAGES[:1])
    ]
    pythons = [Combo(DEFAULTS.database, DEFAULTS.features, python) for python in PYTHONS]
    covering = set(covering_combos())
    return [combo for combo in dict.fromkeys(alone + pythons) if combo not in covering]


@pytest.mark.parametrize(
    "combo",
    tiered(covering_combos(), quick=[DEFAULTS])
    + [pytest.param(c, id=c.id, marks=pytest.mark.exhaustive) for c in exhaustive_combos()],
)
def test_combination(
    combo: Combo, renders: Renders, tmp_path: Path, mypy_cache: Path, timings: Timings
) -> None:
    """Full checks: installed, linted, type-checked, and its own suite run."""
    if combo.database != "sqlite":
        require_server(combo.database)
    if combo.redis_queue:
        require_server("redis")
    if combo.s3_uploads:
        require_server("s3")
    with timings.step("render"):
        project = renders.copy(combo, tmp_path / "project")
    check_render(project, combo)

    check_deploy_files(project, timings)
    with timings.step("uv sync"):
        sync(project, combo.python)
    config = (project / ".venv/pyvenv.cfg").read_text()
    assert f"version_info = {combo.python}." in config or f"version = {combo.python}." in config
    lint(project, mypy_cache, timings)
    if "background_tasks" in combo.features:
        (project / "tests" / "test_user_jobs.py").write_text(USER_JOB_TESTS)
    # Random order, the seed in the command (so in any failure message) to replay it.
    seed = random.randrange(1, 2**32)
    result = run_suite(project, timings, f"--randomly-seed={seed}", "-rA")
    assert passed_count(result) > 0
    assert "PASSED tests/test_contract.py::" in result.stdout, "the contract test did not run"
    if "background_tasks" in combo.features:
        assert "PASSED tests/test_user_jobs.py::" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert " failed" not in summary
    assert " skipped" not in summary
    if combo.database != "sqlite":
        # The suite made and dropped its own database: nothing is left on the server,
        # and the application's own database was never touched.
        assert server_databases(project, combo.database, combo.package) == []
    if combo.redis_queue:
        assert redis_keys(project, combo.package) == [], "the suite left keys in Redis"


def test_factors_are_the_questions_choices() -> None:
    """The combinations are built from copier.yml's choices: a new option value is covered."""
    questions = yaml.safe_load((ROOT / "copier.yml").read_text())

    def choices(name: str) -> tuple[str, ...]:
        listed = questions[name]["choices"]
        return tuple(sorted(listed.values() if isinstance(listed, dict) else listed))

    assert choices("database") == tuple(sorted(FACTORS["database"]))
    assert choices("python_version") == tuple(sorted(PYTHONS))
    assert choices("features") == tuple(sorted(FEATURES))
    assert choices("task_queue") == tuple(sorted(QUEUES))
    assert choices("upload_storage") == tuple(sorted(STORAGES))
    assert tuple(questions["features"]["default"]) == DEFAULTS.features
    assert questions["python_version"]["default"] == DEFAULTS.python
    assert questions["database"]["default"] == DEFAULTS.database


def test_every_valid_combination_gets_cheap_checks() -> None:
    combos = all_combos()
    ids = [combo.id for combo in combos]
    assert len(set(ids)) == len(ids), "two combinations share an id"
    # Every subset of features on every database and Python; jobs on either queue, uploads
    # in either storage.
    jobs = len(QUEUES) + 1
    uploads = len(STORAGES) + 1
    others = 2 ** (len(FEATURES) - 2)
    assert len(combos) == len(FACTORS["database"]) * len(PYTHONS) * jobs * uploads * others
    assert all(Combo.from_factors(c.factors()) == c for c in combos)


def test_full_checks_cover_every_pair_of_option_values() -> None:
    """Every value of a factor meets every value of every other factor in a full build."""
    covering = covering_combos()
    expected = {
        ((a, x), (b, y))
        for a, b in combinations(sorted(FACTORS), 2)
        for x in FACTORS[a]
        for y in FACTORS[b]
    }
    missing = expected - value_pairs(covering)
    assert not missing, f"pairs without a full build: {sorted(missing)}"
    assert DEFAULTS in covering
    assert EVERYTHING_OFF in covering
    assert set(covering) <= set(all_combos())
    assert len(set(covering)) == len(covering)
    # Pairwise, not every combination: the set grows with the largest factors, not their product.
    assert len(covering) < len(all_combos()) / 4


ALL_ON = Combo("postgresql", FEATURES, queue="redis", storage="s3")
FAILING_TEST = "def test_fails() -> None:\n    raise AssertionError('deliberate')\n"


@pytest.mark.slow
@pytest.mark.parametrize("database", ["postgresql", "mysql"])
def test_server_suite_in_parallel_and_after_a_failure(
    database: str, renders: Renders, tmp_path: Path, timings: Timings
) -> None:
    """``pytest -n 2`` gets one database per worker, every test passes but one deliberate
    failure, and the failed run still drops every database it made."""
    require_server(database)
    combo = Combo(database, FEATURES)
    # A copy of its own: the deliberate failure joins its tests, which the shared installed
    # project's other users must not collect (the feature fixtures are global plugins).
    project = renders.copy(combo, tmp_path / "project")
    with timings.step("uv sync"):
        sync(project, combo.python)
    (project / "tests" / "test_zz_failing.py").write_text(FAILING_TEST)
    env, prefix = own_test_database(database, combo.package, "par")
    result = run_suite(project, timings, "-n", "2", "-rA", check=False, env=env)
    assert result.returncode == 1, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert "1 failed" in summary, summary
    assert passed_count(result) > 100, summary
    assert "FAILED tests/test_zz_failing.py::test_fails" in result.stdout
    assert server_databases(project, database, prefix) == []


@pytest.mark.parametrize("combo", [DEFAULTS, ALL_ON], ids=lambda c: c.id)
def test_compiled_once_renders_the_same_bytes(combo: Combo, tmp_path: Path) -> None:
    """The harness compiles each Jinja source once per process (``harness.compiled_once``):
    a render with that cache, after others filled it, equals one compiled from scratch, byte
    for byte (the random secret in .env aside)."""
    render(tmp_path / "warm-up", EVERYTHING_OFF.data())
    cached = render(tmp_path / "cached", combo.data())
    fresh = render(tmp_path / "fresh", combo.data(), compile_once=False)
    key = f"{combo.package.upper()}_SECRET_KEY="

    def files(project: Path) -> dict[str, str]:
        texts = {str(p.relative_to(project)): p.read_text() for p in rendered_files(project)}
        env = texts[".env"]
        texts[".env"] = env.replace(env.split(key)[1].split()[0], "SECRET")
        return texts

    assert files(cached) == files(fresh)
