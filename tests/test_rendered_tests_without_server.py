"""A rendered suite asks for a database only where a test uses one.

On a machine without the project's database server, the tests that need none (settings,
logging, security options, pure functions) still pass, and every other test stops at setup
with a message that says what to start.
"""

import re

import pytest

from harness import FEATURES, Combo, run

from .checks import Renders

CLOSED_PORT_URL = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
SERVERLESS_MODULES = ("tests/test_settings.py",)


@pytest.mark.slow
def test_tests_that_need_no_server_pass_without_one(renders: Renders) -> None:
    project = renders.installed(Combo("postgresql", FEATURES))  # writes nothing to it
    result = run(
        ["uv", "run", "--no-sync", "pytest", "-q", "-p", "no:randomly", "-rfE"],
        project,
        env={"TEST_DATABASE_URL": CLOSED_PORT_URL},
        check=False,
    )
    output = result.stdout + result.stderr
    passed = int(re.search(r"(\d+) passed", output).group(1))  # type: ignore[union-attr]
    assert passed >= 20, output[-4000:]
    for line in output.splitlines():
        if line.startswith(("ERROR ", "FAILED ")):
            assert not line.split()[1].startswith(SERVERLESS_MODULES), line
    assert "Start the database server or set TEST_DATABASE_URL" in output
    assert result.returncode != 0  # the tests that need the database did not run
