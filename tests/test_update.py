"""``copier update`` from every earlier release to HEAD, as a user would run it.

The project is rendered from an old release with non-default answers, committed, edited like
a user would (a route, a new module and test, a dependency, README, .env), committed, then
updated with ``run_update(..., defaults=True, overwrite=True, unsafe=True)``: ``unsafe`` is the
command line's ``--trust``, which an update crossing a release with a migration (0.9.0 moved
the features' modules, hooks/0.9.0_features_in_folders.py) needs.
"""

from __future__ import annotations

import filecmp
import importlib.util
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import copier
import pytest
from copier.errors import UnsafeTemplateError, UserMessageError
from packaging.version import Version

import harness
from harness import BIN, FEATURES, answers, render, rendered_files, sync, uv

from .checks import Renders, Timings, passed_count, require_server, run_suite, tree_digest
from .releases import Release, git, releases, tagged_clone

ANSWERS: dict[str, Any] = {
    "project_name": "Acme Orders",
    "description": "Orders for Acme",
    "author_name": "Acme Team",
    "author_email": "team@acme.test",
    "python_version": "3.12",
    "database": "sqlite",
    "features": ["http_client", "uploads"],
}
PKG = "acme_orders"
ROUTE_DOC = "# Names are unique across the catalogue (Acme rule 7)."
USER_MODULE = '''"""A module the user added."""


def greet(name: str) -> str:
    return f"hello {name}"
'''
USER_TEST = f'''"""A test the user added."""

from {PKG}.greetings import greet


def test_greet() -> None:
    assert greet("ada") == "hello ada"
'''
USER_FILES = ("src/acme_orders/greetings.py", "tests/test_greetings.py")
EDITED_FILES = ("src/acme_orders/routers/items.py", "pyproject.toml", "README.md", ".env")


def installed_suite(
    project: Path, renders: Renders, timings: Timings, python: str = ANSWERS["python_version"]
) -> str:
    """``uv sync`` and the project's suite (``-rA``: each test named), once per run
    for a given tree: updates that end in the same files as an earlier test's (from every
    release to HEAD, checked equal to a fresh render plus the same edits) reuse its result.
    """

    def install_and_test() -> str:
        with timings.step("uv sync"):
            sync(project, python)
        result = run_suite(project, timings, "-rA")
        assert passed_count(result) > 0
        return result.stdout

    # The answers file names the template clone, one per worker; no test reads it.
    digest = tree_digest(project, ignore=frozenset({".copier-answers.yml"}))
    output, ran = renders.once(f"suite-{digest}", install_and_test)
    if not ran:
        with timings.step("suite of an earlier test on the same tree"):
            pass
    return output


def previous(found: list[Release]) -> Release:
    """The newest release before HEAD (HEAD itself may be a release commit)."""
    head = git("rev-parse", "HEAD")
    return [r for r in found if r.commit != head][-1]


def tiered_versions() -> list[Any]:
    """Every release; all but the previous one only in the full suite."""
    found = releases()
    last = previous(found)
    slow = pytest.mark.slow
    return [pytest.param(str(r.version), marks=() if r == last else slow) for r in found]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Release]]:
    root = tmp_path_factory.mktemp("template") / "repo"
    # HEAD of the clone holds the files every other render of this run reads (the fresh
    # renders compared with updated projects included).
    return tagged_clone(root, work_tree=harness.snapshot())


def commit_all(project: Path, message: str) -> None:
    git("add", "-A", cwd=project)
    git("-c", "user.name=u", "-c", "user.email=u@u", "commit", "-qm", message, cwd=project)


def edit_like_a_user(project: Path) -> None:
    items = project / "src/acme_orders/routers/items.py"
    items.write_text(
        # A line no release has changed since 0.1.0 (an edit next to one the template changes
        # is a conflict to resolve: test_overlapping_edit_shows_inline_conflict_markers).
        items.read_text().replace(
            "async def _flush_or_409(session: AsyncSession, name: str) -> None:\n",
            "async def _flush_or_409(session: AsyncSession, name: str) -> None:\n"
            f"    {ROUTE_DOC}\n",
        )
    )
    (project / USER_FILES[0]).write_text(USER_MODULE)
    (project / USER_FILES[1]).write_text(USER_TEST)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            '"uvicorn[standard]>=0.34",\n]',
            '"uvicorn[standard]>=0.34",\n    "humanize>=4.9",\n]',
            1,
        )
    )
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## Our notes\n\nOn call: the orders team.\n")
    env = project / ".env"
    env.write_text(env.read_text() + "ACME_ORDERS_LOG_LEVEL=debug\n")


def assert_user_edits_intact(project: Path) -> None:
    assert ROUTE_DOC in (project / "src/acme_orders/routers/items.py").read_text()
    assert (project / USER_FILES[0]).read_text() == USER_MODULE
    assert (project / USER_FILES[1]).read_text() == USER_TEST
    assert '"humanize>=4.9",' in (project / "pyproject.toml").read_text()
    assert "On call: the orders team." in (project / "README.md").read_text()
    assert "ACME_ORDERS_LOG_LEVEL=debug" in (project / ".env").read_text()


def assert_clean_merge(project: Path) -> None:
    for path in rendered_files(project):
        assert path.suffix != ".rej", f"rejected hunks left in {path}"
        text = path.read_text(encoding="utf-8", errors="replace")
        for marker in ("<<<<<<< ", ">>>>>>> ", "\n=======\n"):
            assert marker not in text, f"conflict marker in {path.relative_to(project)}"


def assert_equals_fresh_render(project: Path, fresh: Path, ignore: set[str]) -> None:
    """Every file the user did not touch is exactly what a fresh render gives."""
    ours = {str(p.relative_to(project)) for p in rendered_files(project)}
    theirs = {str(p.relative_to(fresh)) for p in rendered_files(fresh)}
    ignore = ignore | {"uv.lock", ".copier-answers.yml"}
    assert theirs - ours - ignore == set(), "files of the new release missing"
    assert ours - theirs - ignore - set(USER_FILES) == set(), "files the new release dropped"
    for name in sorted(theirs - ignore):
        assert filecmp.cmp(project / name, fresh / name, shallow=False), f"{name} differs"


def secret(project: Path) -> str:
    env = (project / ".env").read_text()
    return env.split("ACME_ORDERS_SECRET_KEY=")[1].split()[0]


def update(project: Path, data: dict[str, Any] | None = None) -> None:
    """``copier update --defaults --trust --vcs-ref HEAD``: a user crossing 0.9.0 must trust
    the template (its migration carries their edits of the modules that moved)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        copier.run_update(
            project,
            data=data or {},
            defaults=True,
            overwrite=True,
            quiet=True,
            vcs_ref="HEAD",
            unsafe=True,
        )


def render_release(
    template: tuple[Path, list[Release]], release: Release, dst: Path, **extra: Any
) -> Path:
    repo, _ = template
    project = render(dst, {**ANSWERS, **extra}, src=repo, vcs_ref=release.tag)
    git("init", "-q", cwd=project)
    commit_all(project, f"render {release.tag}")
    return project


@pytest.mark.parametrize("version", tiered_versions())
def test_update_from_release_keeps_user_edits(
    template: tuple[Path, list[Release]],
    version: str,
    renders: Renders,
    tmp_path: Path,
    timings: Timings,
) -> None:
    repo, found = template
    release = next(r for r in found if str(r.version) == version)
    project = render_release(template, release, tmp_path / "project")
    assert answers(project)["_commit"] == release.tag
    before_secret = secret(project)
    edit_like_a_user(project)
    commit_all(project, "user edits")

    update(project)

    assert_clean_merge(project)
    assert_user_edits_intact(project)
    assert secret(project) == before_secret
    head = git("describe", "--tags", "--always", "HEAD", cwd=repo)
    assert answers(project)["_commit"] == head
    fresh = render(tmp_path / "fresh", ANSWERS)
    assert_equals_fresh_render(project, fresh, set(EDITED_FILES))
    assert "PASSED tests/test_greetings.py::test_greet" in installed_suite(
        project, renders, timings
    )


# (answers changed by the update, the release updated from, the server the suite needs)
CHANGES = [
    pytest.param({"features": ["uploads", "background_tasks"]}, "first", None, id="features"),
    pytest.param({"features": []}, "first", None, id="all-features-off"),
    pytest.param({"database": "postgresql"}, "first", "postgresql", id="sqlite-to-postgresql"),
    pytest.param({"database": "mysql"}, "first", "mysql", id="sqlite-to-mysql"),
    # Options new since the last release, turned on by the update.
    pytest.param(
        {"features": ["http_client", "uploads", "observability"]},
        "previous",
        None,
        id="observability-on",
    ),
    pytest.param({"upload_storage": "s3"}, "previous", "s3", id="uploads-to-s3"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("change", "since", "server"), CHANGES)
def test_update_with_changed_answers(
    template: tuple[Path, list[Release]],
    change: dict[str, Any],
    since: str,
    server: str | None,
    renders: Renders,
    tmp_path: Path,
    timings: Timings,
) -> None:
    if server:
        require_server(server)
    _, found = template
    release = found[0] if since == "first" else previous(found)
    project = render_release(template, release, tmp_path / "project")
    edit_like_a_user(project)
    commit_all(project, "user edits")

    update(project, change)

    assert_clean_merge(project)
    assert_user_edits_intact(project)
    for key, value in change.items():
        assert answers(project)[key] == value
    fresh = render(tmp_path / "fresh", {**ANSWERS, **change})
    assert_equals_fresh_render(project, fresh, set(EDITED_FILES))
    assert "PASSED tests/test_greetings.py::test_greet" in installed_suite(
        project, renders, timings
    )


@pytest.mark.slow
def test_auth_turned_on_and_off_again(
    template: tuple[Path, list[Release]], renders: Renders, tmp_path: Path, timings: Timings
) -> None:
    """From the previous release, one ``copier update`` turns auth on and a later one turns it
    off: each merges cleanly, keeps the user's edits, equals a fresh render and passes its
    suite (item writes need a user in between, and no word of auth is left after)."""
    _, found = template
    project = render_release(template, previous(found), tmp_path / "project")
    edit_like_a_user(project)
    commit_all(project, "user edits")
    steps = [("on", [*ANSWERS["features"], "auth"]), ("off", ANSWERS["features"])]
    for state, features in steps:
        update(project, {"features": features})
        assert_clean_merge(project)
        assert_user_edits_intact(project)
        assert answers(project)["features"] == features
        fresh = render(tmp_path / f"fresh-{state}", {**ANSWERS, "features": features})
        assert_equals_fresh_render(project, fresh, set(EDITED_FILES))
        assert (project / f"src/{PKG}/features/auth/security.py").exists() == (state == "on")
        assert "PASSED tests/test_greetings.py::test_greet" in installed_suite(
            project, renders, timings
        )
        commit_all(project, f"auth {state}")


# Run in the project after the update that turned auth on: what each kind of user sees of the
# rows written before (an item, an upload, a job, none with an owner).
SEEN_AFTER_AUTH = """
import asyncio, json, sys
import httpx2
from asgi_lifespan import LifespanManager
from {pkg}.app import create_app

async def main(ids):
    app = create_app()
    async with LifespanManager(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as client:
            async def token(email, password):
                form = {{"username": email, "password": password}}
                response = await client.post("/auth/token", data=form)
                return {{"Authorization": "Bearer " + response.json()["access_token"]}}
            seen = {{}}
            root = await token("root@acme.test", "root-password-long-enough")
            user = {{"email": "clerk@acme.test", "password": "clerk-password-long-enough"}}
            assert (await client.post("/users", json=user, headers=root)).status_code == 201
            clerk = await token(user["email"], user["password"])
            for who, headers in (("superuser", root), ("user", clerk), ("anonymous", {{}})):
                paths = ("/items/" + ids["item"], "/uploads/" + ids["upload"] + "/meta",
                         "/tasks/" + ids["job"])
                seen[who] = [
                    (await client.get(path, headers=headers)).status_code for path in paths
                ]
    print(json.dumps(seen))

asyncio.run(main(json.loads(sys.argv[1])))
"""


@pytest.mark.slow
def test_auth_turned_on_keeps_earlier_rows_for_superusers(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """A project of the previous release with items, uploads and jobs in its database turns
    auth on: the migration keeps every row, without an owner, so superusers see them and
    other users get 404s (what the upgrade notes say)."""
    _, found = template
    features = ["uploads", "background_tasks"]
    project = render_release(template, previous(found), tmp_path / "project", features=features)
    database = tmp_path / "acme.db"
    env = {
        "ACME_ORDERS_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "ACME_ORDERS_ENVIRONMENT": "development",
        "ACME_ORDERS_UPLOAD_DIR": str(tmp_path / "uploads"),
    }
    sync(project)
    commit_all(project, "lock file")  # as a user would: uv sync wrote uv.lock
    harness.run(uv("run", "alembic", "upgrade", "heads"), project, env=env)
    ids = {"item": "7", "upload": "0" * 31 + "1", "job": "0" * 31 + "2"}
    with sqlite3.connect(database) as connection:
        connection.execute("INSERT INTO items (id, name, price_cents) VALUES (7, 'old', 1)")
        connection.execute(
            "INSERT INTO uploads (id, filename, content_type, size, sha256)"
            " VALUES (?, 'a.pdf', 'application/pdf', 1, ?)",
            (ids["upload"], "0" * 64),
        )
        connection.execute(
            "INSERT INTO jobs (id, kind, status, payload)"
            " VALUES (?, 'word_count', 'succeeded', '{}')",
            (ids["job"],),
        )

    update(project, {"features": [*features, "auth"]})
    assert_clean_merge(project)
    sync(project)
    harness.run(uv("run", "alembic", "upgrade", "heads"), project, env=env)
    with sqlite3.connect(database) as connection:
        for table in ("items", "uploads", "jobs"):
            rows = connection.execute(f"SELECT owner_id FROM {table}").fetchall()
            assert rows == [(None,)], table
    superuser = {
        **env,
        "ACME_ORDERS_FIRST_SUPERUSER_EMAIL": "root@acme.test",
        "ACME_ORDERS_FIRST_SUPERUSER_PASSWORD": "root-password-long-enough",
    }
    command = uv("run", "python", "-m", f"{PKG}.features.auth.create_superuser")
    harness.run(command, project, env=superuser)
    script = SEEN_AFTER_AUTH.format(pkg=PKG)
    ids["upload"] = str(uuid.UUID(ids["upload"]))
    ids["job"] = str(uuid.UUID(ids["job"]))
    result = harness.run(uv("run", "python", "-c", script, json.dumps(ids)), project, env=env)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"superuser": [200, 200, 200], "user": [404, 404, 404], "anonymous": [401] * 3}


@pytest.mark.slow
def test_overlapping_edit_shows_inline_conflict_markers(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """Where the user changed a line the template changed too, Copier writes inline
    conflict markers (no *.rej), for the user to resolve; pre-commit's
    check-merge-conflict refuses to commit them."""
    repo, found = template
    project = render_release(template, found[0], tmp_path / "project")
    old = (project / "pyproject.toml").read_text()
    fresh = render(tmp_path / "fresh", ANSWERS, src=repo)
    new = (fresh / "pyproject.toml").read_text()
    changed = [line for line in old.splitlines() if line not in new.splitlines()]
    added = [line for line in new.splitlines() if line not in old.splitlines()]
    if not changed or not added:
        pytest.skip("the template's pyproject.toml did not change since this release")
    (project / "pyproject.toml").write_text(old.replace(changed[0], changed[0] + "  # ours"))
    commit_all(project, "user edit on a line the template changes")
    update(project)
    text = (project / "pyproject.toml").read_text()
    assert "<<<<<<< " in text
    assert ">>>>>>> " in text
    assert not list(project.rglob("*.rej"))


def files_of(project: Path) -> dict[str, bytes]:
    return {str(p.relative_to(project)): p.read_bytes() for p in rendered_files(project)}


def test_dirty_work_tree_is_refused_and_untouched(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    _, found = template
    project = render_release(template, found[0], tmp_path / "project")
    (project / "README.md").write_text("uncommitted edit\n")
    before = files_of(project)
    with pytest.raises(UserMessageError, match="dirty"):
        update(project)
    assert files_of(project) == before


def test_not_a_git_repository_is_refused_and_untouched(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    repo, found = template
    project = render(tmp_path / "project", ANSWERS, src=repo, vcs_ref=found[0].tag)
    before = files_of(project)
    with pytest.raises(UserMessageError, match="git"):
        update(project)
    assert files_of(project) == before


@pytest.mark.slow
def test_update_from_the_command_line(template: tuple[Path, list[Release]], tmp_path: Path) -> None:
    """The user's own command: ``copier update --defaults --trust`` in the project (--trust:
    from before 0.9.0, Copier runs the migration that carries edits of moved modules)."""
    _, found = template
    project = render_release(template, found[0], tmp_path / "project")
    result = subprocess.run(
        ["copier", "update", "--defaults", "--trust", "--vcs-ref", "HEAD"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert_clean_merge(project)


# --- 0.9.0: the features' modules moved into src/<pkg>/features/<name>/ ---------------------
#
# Copier has no rename detection: an edit of a module that moves would be applied to its old
# path, rejected, and lost when the old path is deleted. The migration
# hooks/0.9.0_features_in_folders.py (copier.yml ``_migrations``, run with --trust) carries
# the edits over to the new path with a 3-way merge.

MOVED = Version("0.9.0")
HOOK = harness.ROOT / "hooks" / f"{MOVED}_features_in_folders.py"


def _load_hook() -> Any:
    spec = importlib.util.spec_from_file_location("features_in_folders", HOOK)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MOVES: tuple[tuple[str, str], ...] = _load_hook().MOVES


def src(path: str) -> str:
    """A module's path in the project, from its path in the package."""
    return f"src/{PKG}/{path}"


def before_the_move() -> list[Release]:
    """The last two releases before the move, oldest first."""
    return [release for release in releases() if release.version < MOVED][-2:]


@pytest.fixture(scope="module")
def moving_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Release]]:
    """A tagged clone whose HEAD is, for Copier, 0.9.0 or later: Copier runs a migration only
    when the template's version at the ref updated to is at least the migration's. Until
    CHANGELOG.md has the 0.9.0 heading, HEAD is ``v0.8.0-N-g<hash>`` (0.8.0.postN) and no
    update crosses 0.9.0, so HEAD gets the tag v0.9.0 here; from the release on, the tags of
    ``tagged_clone`` are used as they are. (Not the shared ``template``: a tag there would
    change what other tests update to.)"""
    root = tmp_path_factory.mktemp("moving") / "repo"
    repo, found = tagged_clone(root, work_tree=harness.snapshot())
    if not any(release.version >= MOVED for release in found):
        git("tag", f"v{MOVED}", "HEAD", cwd=repo)
    return repo, found


# (old path, new path, a line of the module the move leaves alone since 0.7.0, a comment the
# user adds above it): edits inside functions, next to no line the release changes.
MOVE_EDITS = (
    (
        "storage.py",
        "features/uploads/storage.py",
        "    if not _KEY.fullmatch(key):",
        "    # Acme: keys are checked before a backend sees them.",
    ),
    (
        "routers/uploads.py",
        "features/uploads/routes.py",
        '    return f"attachment; filename=',
        "    # Acme: browsers save the file under this name.",
    ),
    (
        "http.py",
        "features/http_client/client.py",
        "    return HTTP_CLIENT.get(request)",
        "    # Acme: one client per app.",
    ),
    (
        "auth.py",
        "features/auth/security.py",
        "    return email.strip().lower()",
        "    # Acme: addresses compare case-insensitively.",
    ),
    (
        "jobs.py",
        "features/jobs/jobs.py",
        "    if job.delay_seconds:",
        "    # Acme: the delay is for demos.",
    ),
)
ALL_FEATURES = list(FEATURES)


def insert_above(text: str, anchor: str, line: str) -> str:
    lines = text.splitlines(keepends=True)
    found = [i for i, existing in enumerate(lines) if existing.startswith(anchor)]
    assert len(found) == 1, f"{anchor!r} found {len(found)} times"
    lines.insert(found[0], line + "\n")
    return "".join(lines)


def resolve(text: str, side: str) -> str:
    """``text`` with each conflict resolved by taking one side (``ours``: before updating)."""
    pattern = re.compile(
        r"^<<<<<<< before updating\n(.*?)^=======\n(.*?)^>>>>>>> after updating\n",
        re.MULTILINE | re.DOTALL,
    )
    return pattern.sub(lambda match: match.group(1 if side == "ours" else 2), text)


@pytest.mark.parametrize("version", [str(r.version) for r in before_the_move()])
def test_update_across_the_move_carries_edits_to_the_new_paths(
    moving_template: tuple[Path, list[Release]],
    version: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """From each of the last two releases before 0.9.0, with every feature on: the user's
    edits of modules that move are in the new modules, merged cleanly; the old paths are gone;
    every other file is a fresh render's; the migration says what it carried."""
    _, found = moving_template
    release = next(r for r in found if str(r.version) == version)
    project = render_release(moving_template, release, tmp_path / "project", features=ALL_FEATURES)
    for old, _, anchor, line in MOVE_EDITS:
        module = project / src(old)
        module.write_text(insert_above(module.read_text(), anchor, line))
    commit_all(project, "user edits of modules that move in 0.9.0")
    capfd.readouterr()

    update(project)

    said = capfd.readouterr().err
    assert_clean_merge(project)
    for old, _ in MOVES:
        assert not (project / src(old)).exists(), f"{src(old)} left behind"
    fresh = render(tmp_path / "fresh", {**ANSWERS, "features": ALL_FEATURES})
    for old, new, anchor, line in MOVE_EDITS:
        expected = insert_above((fresh / src(new)).read_text(), anchor, line)
        assert (project / src(new)).read_text() == expected, f"{src(new)}: not the edit alone"
        carried = f"{MOVED} moved {src(old)} to {src(new)}: your changes were carried over\n"
        assert carried in said
    edited = {src(new) for _, new, _, _ in MOVE_EDITS}
    assert_equals_fresh_render(project, fresh, edited | {".env"})
    assert not git("ls-files", "--unmerged", cwd=project)


def test_moves_are_what_the_template_moved(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """The migration's table against the template: with every feature on (both job queues,
    both upload storages), each old path is a module of the last release before the move and
    not of HEAD, each new path one of HEAD, and every module of that release that HEAD no
    longer has is in the table (a move the migration does not know would lose edits)."""
    repo, found = template
    release = next(r for r in found if r.version == before_the_move()[-1].version)
    old_modules: set[str] = set()
    new_modules: set[str] = set()
    for options in ({"task_queue": "redis", "upload_storage": "s3"}, {}):
        data = {**ANSWERS, "features": ALL_FEATURES, **options}
        name = "-".join(options.values()) or "defaults"
        for modules, ref in ((old_modules, release.tag), (new_modules, "HEAD")):
            dst = render(tmp_path / f"{ref}-{name}", data, src=repo, vcs_ref=ref)
            package = dst / src("")
            modules.update(str(p.relative_to(package)) for p in package.rglob("*.py"))
    table = dict(MOVES)
    assert set(table) <= old_modules, "old paths the last release did not render"
    assert set(table.values()) <= new_modules, "new paths HEAD does not render"
    assert sorted(old_modules - new_modules) == sorted(table), "modules gone, not in MOVES"


def test_git_add_commits_every_rendered_file(tmp_path: Path) -> None:
    """After an update (or ``git init`` of a new project), ``git add -A`` takes every file the
    template renders but .env: the project's .gitignore leaves out local state only (a
    pattern such as ``uploads/`` for the upload directory would also match
    ``src/<pkg>/features/uploads/``, and the feature's package would never be committed)."""
    project = render(tmp_path / "project", {**ANSWERS, "features": ALL_FEATURES})
    git("init", "-q", cwd=project)
    git("add", "-A", cwd=project)
    listed = git("ls-files", "--others", "--ignored", "--exclude-standard", "-z", cwd=project)
    ignored = set(filter(None, listed.split("\0")))
    rendered = {str(p.relative_to(project)) for p in rendered_files(project)}
    assert sorted(ignored & rendered) == [".env"], "rendered files that .gitignore leaves out"


def test_update_across_the_move_edit_on_a_changed_line_conflicts(
    moving_template: tuple[Path, list[Release]],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """An edit of a line the move changes (a relative import): inline conflict markers in the
    new module, recorded as a conflict in git's index, and nothing lost: one side is the
    user's module, the other the release's."""
    _, found = moving_template
    release = next(r for r in found if r == before_the_move()[-1])
    project = render_release(moving_template, release, tmp_path / "project")
    old, new = "storage.py", "features/uploads/storage.py"
    module = project / src(old)
    ours = module.read_text().replace(
        "from .state import AppResource\n", "from .state import AppResource  # Acme: ours\n"
    )
    assert "# Acme: ours" in ours
    module.write_text(ours)
    commit_all(project, "user edit of an import line")
    capfd.readouterr()

    update(project)

    said = capfd.readouterr().err
    assert f"moved {src(old)} to {src(new)}: your changes were carried over with conflicts" in said
    assert not (project / src(old)).exists()
    assert not list(project.rglob("*.rej"))
    text = (project / src(new)).read_text()
    assert "<<<<<<< before updating\n" in text
    assert ">>>>>>> after updating\n" in text
    fresh = render(tmp_path / "fresh", ANSWERS)
    assert resolve(text, "theirs") == (fresh / src(new)).read_text()
    assert "from .state import AppResource  # Acme: ours\n" in resolve(text, "ours")
    assert git("ls-files", "--unmerged", "--", src(new), cwd=project)


def test_update_across_the_move_without_trust_is_refused_and_untouched(
    moving_template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """Without --trust (``unsafe``), Copier refuses an update that would run the migration,
    saying why, before it changes anything."""
    _, found = moving_template
    release = next(r for r in found if r == before_the_move()[-1])
    project = render_release(moving_template, release, tmp_path / "project")
    before = files_of(project)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UnsafeTemplateError, match="unsafe feature: migrations") as refused:
            copier.run_update(project, defaults=True, overwrite=True, quiet=True, vcs_ref="HEAD")
    assert "--trust" in str(refused.value)
    assert files_of(project) == before
    assert git("status", "--porcelain", cwd=project) == ""


# --- the migration alone, on a project moved by hand as 0.9.0 would -------------------------


def run_hook(project: Path) -> subprocess.CompletedProcess[str]:
    """The migration as Copier runs it: its interpreter, in the project."""
    return subprocess.run(
        [sys.executable, str(HOOK), PKG, ".copier-answers.yml"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )


def move_by_hand(project: Path, rendered: str, keep: frozenset[str] = frozenset()) -> None:
    """What ``copier update`` across 0.9.0 does to moved modules, in a small way: the old path
    deleted (the template rendered it; not in ``keep``), the new path written with the old
    render's module, each relative import now ``from ...`` (the lines the move changes)."""
    for old, new in MOVES:
        if (project / src(old)).exists() and old not in keep:
            pristine = git("show", f"{rendered}:{src(old)}", cwd=project) + "\n"
            (project / src(old)).unlink()
            (project / src(new)).parent.mkdir(parents=True, exist_ok=True)
            (project / src(new)).write_text(re.sub(r"^from \.+", "from ...", pristine, flags=re.M))


def test_migration_carries_edits_reports_and_is_idempotent(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """Each case the migration meets, in one project of the last release before the move:
    an edit away from what moved (carried, clean), an edit of an import line the move changes
    (carried, conflict recorded in the index), a module not edited (left as the release has
    it), a module the user had deleted (reported), the user's own module at an old path the
    template did not render (left alone, reported), an edited module of a feature the update
    turned off (gone, as any other module of it). A second run changes nothing."""
    _, found = template
    release = next(r for r in found if r.version == before_the_move()[-1].version)
    project = render_release(template, release, tmp_path / "project")
    rendered = git("rev-parse", "HEAD", cwd=project)
    storage = project / src("storage.py")
    storage.write_text(insert_above(storage.read_text(), *MOVE_EDITS[0][2:]))
    uploads = project / src("routers/uploads.py")
    ours = uploads.read_text().replace(
        "from ..db import Database\n", "from ..db import Database  # x\n"
    )
    assert "  # x\n" in ours
    uploads.write_text(ours)
    local = project / src("storage_local.py")
    local.write_text(local.read_text() + "# Acme: local only\n")
    (project / src("routers/upstream.py")).unlink()
    own = "# Acme's own job helpers\n"
    (project / src("jobs.py")).write_text(own)
    commit_all(project, "user edits")
    move_by_hand(project, rendered, keep=frozenset({"jobs.py"}))
    (project / src("features/uploads/storage_local.py")).unlink()  # upload_storage: s3 now
    (project / src("features/http_client/routes.py")).write_text("# 0.9.0's upstream\n")
    (project / src("features/jobs")).mkdir(parents=True)
    (project / src("features/jobs/jobs.py")).write_text("# 0.9.0's jobs\n")
    moved = {str(p.relative_to(project)): p.read_bytes() for p in rendered_files(project)}

    first = run_hook(project)

    assert first.returncode == 0, first.stderr
    said = first.stderr.splitlines()
    carried = "your changes were carried over"
    assert sorted(said) == sorted(
        [
            f"0.9.0 moved {src('storage.py')} to {src('features/uploads/storage.py')}: {carried}",
            f"0.9.0 moved {src('routers/uploads.py')} to {src('features/uploads/routes.py')}: "
            f"{carried} with conflicts to resolve",
            f"0.9.0 moved {src('routers/upstream.py')} to {src('features/http_client/routes.py')}"
            f": you had deleted {src('routers/upstream.py')}, and the update wrote the release's "
            f"{src('features/http_client/routes.py')}: delete it again if you do not want it",
            f"0.9.0 moved {src('jobs.py')} to {src('features/jobs/jobs.py')}: your "
            f"{src('jobs.py')}, which the template did not render, is left where it is",
        ]
    ), first.stderr
    after = {str(p.relative_to(project)): p.read_bytes() for p in rendered_files(project)}
    changed = {name for name in after.keys() | moved.keys() if after.get(name) != moved.get(name)}
    assert changed == {src("features/uploads/storage.py"), src("features/uploads/routes.py")}
    clean = (project / src("features/uploads/storage.py")).read_text()
    assert MOVE_EDITS[0][3] in clean
    assert "<<<<<<<" not in clean
    conflicted = (project / src("features/uploads/routes.py")).read_text()
    assert "from ..db import Database  # x\n" in resolve(conflicted, "ours")
    assert "from ...db import Database\n" in resolve(conflicted, "theirs")
    unmerged = git("ls-files", "--unmerged", cwd=project).splitlines()
    assert sorted(line.split()[2] for line in unmerged) == ["1", "2", "3"]
    assert {line.split("\t")[1] for line in unmerged} == {src("features/uploads/routes.py")}
    assert (project / src("jobs.py")).read_text() == own

    second = run_hook(project)

    assert second.returncode == 0, second.stderr
    again = {str(p.relative_to(project)): p.read_bytes() for p in rendered_files(project)}
    assert again == after
    assert "already carried over, with conflicts to resolve" in second.stderr
    assert carried not in second.stderr


def test_migration_that_cannot_render_the_last_release_fails_saying_what_to_do(
    template: tuple[Path, list[Release]], tmp_path: Path
) -> None:
    """Without the base of the merge (the template cannot be rendered again) the migration
    exits non-zero, so Copier reports the update failed, and says where the user's modules
    are; it changes nothing."""
    _, found = template
    release = next(r for r in found if r.version == before_the_move()[-1].version)
    project = render_release(template, release, tmp_path / "project")
    rendered = git("rev-parse", "HEAD", cwd=project)
    storage = project / src("storage.py")
    storage.write_text(storage.read_text() + "# Acme\n")
    answers_file = project / ".copier-answers.yml"
    answers_file.write_text(
        re.sub(
            r"^_src_path: .*$",
            f"_src_path: {tmp_path / 'gone'}",
            answers_file.read_text(),
            flags=re.M,
        )
    )
    commit_all(project, "user edit; the template moved away")
    move_by_hand(project, rendered)
    moved = files_of(project)

    result = run_hook(project)

    assert result.returncode == 1
    assert "migration failed: could not render" in result.stderr
    assert "git show HEAD:" in result.stderr
    assert files_of(project) == moved
