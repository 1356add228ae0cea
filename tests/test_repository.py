"""The template repository itself: its CI workflows, README and .ci/run agreeing, and the
relative links of its docs and of a render's docs resolving."""

import re
from pathlib import Path

import pytest

from harness import BIN, EVERYTHING_OFF, FEATURES, ROOT, Combo, render, run

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


# --- links between the docs -------------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
EVERYTHING_ON = Combo("postgresql", FEATURES, queue="redis", storage="s3")


def anchor(heading: str) -> str:
    """GitHub's id of a heading: lower-cased, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def broken_links(root: Path) -> list[str]:
    """Relative links of README.md and docs/*.md under ``root`` whose file or heading is missing
    (links inside code are not links)."""
    broken = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.DOTALL)
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, fragment = target.partition("#")
            resolved = (doc.parent / path).resolve() if path else doc
            where = f"{doc.relative_to(root)}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                broken.append(f"{where} (no such heading)")
    return broken


def test_template_docs_links_resolve() -> None:
    assert (ROOT / "docs").is_dir()
    assert broken_links(ROOT) == []


@pytest.mark.parametrize("combo", [EVERYTHING_ON, EVERYTHING_OFF], ids=lambda combo: combo.id)
def test_rendered_docs_links_resolve(combo: Combo, tmp_path: Path) -> None:
    """Links are rendered under the conditions of the features they name: a render with every
    feature and every server, and one with none, have all their links."""
    project = render(tmp_path / "project", combo.data())
    assert broken_links(project) == []
