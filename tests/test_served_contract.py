"""schemathesis against a served render, as a user would run it from the rendered README.

Each backend's all-features project is migrated, served by its own entry point
(`python -m <pkg>`, uvicorn) and tested over HTTP by `schemathesis run --checks all`, signed
in as the first superuser (made by the project's create_superuser command): every
phase (examples, coverage, fuzzing, stateful), 40 examples per operation, a fixed seed. Zero
failures. The rendered suite's contract test runs the same checks through ASGI; this one
also covers what only a real server does (uvicorn's HTTP parsing, concurrent connections,
the app's own sessions and job runner instead of the test fixtures').
"""

import json
from pathlib import Path

import pytest

from harness import DATABASES, FEATURES, Combo, free_port, run, serve, uv

from .checks import (
    SUITE_URLS,
    Renders,
    create_superuser,
    require_server,
    server_sql,
    sign_in,
)

SIGNS_OUT = [
    f"--exclude-name={name}"
    for name in (
        "POST /users/me/sign-out-everywhere",
        "PUT /users/me/password",
        "PATCH /users/{user_id}",
        "DELETE /users/{user_id}",
    )
]
URLS = {"sqlite": "sqlite+aiosqlite:///{tmp}/served.db", **SUITE_URLS}


@pytest.mark.slow
@pytest.mark.parametrize("database", DATABASES)
def test_served_app_keeps_its_contract(database: str, renders: Renders, tmp_path: Path) -> None:
    if database != "sqlite":
        require_server(database)
    combo = Combo(database, FEATURES)
    project = renders.installed(combo)  # shared with the server suite and range tests
    # Not prefixed by the package: other tests list the server's databases by that prefix.
    name = f"served_{combo.package}"
    if database != "sqlite":
        server_sql(project, database, f"DROP DATABASE IF EXISTS {name}")
        server_sql(project, database, f"CREATE DATABASE {name}")
    prefix = combo.package.upper()
    port = free_port()
    env = {
        f"{prefix}_DATABASE_URL": URLS[database].format(tmp=tmp_path, name=name),
        f"{prefix}_PORT": str(port),
        f"{prefix}_UPLOAD_DIR": str(tmp_path / "uploads"),
        f"{prefix}_LOG_LEVEL": "warning",
    }
    try:
        migrate = uv("run", "--no-sync", "alembic", "upgrade", "heads")
        migrated = run(migrate, project, env={**env, f"{prefix}_LOG_LEVEL": "info"})
        # The migration command logs like the app: JSON lines.
        logged = [json.loads(line) for line in migrated.stderr.splitlines() if line[:1] == "{"]
        assert any(line["logger"].startswith("alembic") for line in logged), migrated.stderr
        # The first superuser, made by the documented command; schemathesis signs in as it.
        create_superuser(project, combo.package, env)
        server = [project / ".venv/bin/python", "-m", combo.package]
        with serve(server, env, port, cwd=project, log=tmp_path / "server.log") as base:
            token = sign_in(base)["Authorization"]
            result = run(
                uv(
                    "run",
                    "--no-sync",
                    "schemathesis",
                    "--no-color",
                    "run",
                    f"{base}/openapi.json",
                    "--checks",
                    "all",
                    "--max-examples",
                    "40",
                    "--seed",
                    "1",
                    "--header",
                    f"Authorization: {token}",
                    # What could sign the one superuser out, demote or delete it: every later
                    # case would be a 401. The rendered suite's contract test covers them.
                    *SIGNS_OUT,
                ),
                project,
                env=env,
                timeout=900,
            )
        assert "No issues found" in result.stdout, result.stdout[-6000:]
    finally:
        if database != "sqlite":
            server_sql(project, database, f"DROP DATABASE IF EXISTS {name}")
