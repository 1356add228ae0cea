"""The template repository itself: its CI workflows, and README and .ci/run agreeing."""

import re
from pathlib import Path

import pytest

from harness import BIN, ROOT, run

WORKFLOW = ROOT / ".github/workflows/template.yml"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block, "README.md must start with a bash block of commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_gives_exactly_two_commands() -> None:
    commands = readme_commands()
    assert len(commands) == 2
    assert "copier copy --defaults" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    script = (ROOT / ".ci/run").read_text()
    assert readme_commands()[1] in script.splitlines()


@pytest.mark.parametrize(
    "workflow", sorted((ROOT / ".github/workflows").glob("*.yml")), ids=lambda path: path.name
)
def test_workflow_is_valid_and_safe(workflow: Path) -> None:
    """Both validators run offline: check-jsonschema's vendored SchemaStore schema, and
    zizmor's offline audits (every audit that needs no GitHub API)."""
    run([BIN / "check-jsonschema", "--builtin-schema", "vendor.github-workflows", workflow], ROOT)
    run([BIN / "zizmor", "--offline", "--no-progress", workflow], ROOT)


def test_template_workflow_tests_everything() -> None:
    text = WORKFLOW.read_text()
    assert "schedule:" in text
    assert "fetch-depth: 0" in text
    assert "upload-artifact" in text
    for service in ("postgres:", "mariadb:", "redis:"):
        assert service in text
