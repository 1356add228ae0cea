"""copier.yml: bad answers fail clearly and write nothing; derived names; the secret."""

import subprocess
from pathlib import Path
from typing import Any

import pytest

from harness import BIN, FEATURES, answers, render

BAD_ANSWERS = [
    ({"package_name": "1bad-name"}, "package_name", "lowercase Python identifier"),
    ({"package_name": "fastapi"}, "package_name", "clashes"),
    ({"package_name": "class"}, "package_name", "clashes"),
    ({"package_name": "a" * 33}, "package_name", "at most 32"),
    ({"project_slug": "Bad Slug"}, "project_slug", "kebab-case"),
    ({"project_slug": "double--dash"}, "project_slug", "kebab-case"),
    ({"project_name": "   "}, "project_name", "must not be empty"),
    ({"author_email": "nobody"}, "author_email", "e-mail"),
    ({"database": "oracle"}, "database", "not in"),
    ({"features": ["cache"]}, "features", "not in"),
    ({"python_version": "3.9"}, "python_version", "not in"),
    ({"secret_key": "short"}, "secret_key", "at least 32"),
]


@pytest.mark.parametrize(("data", "question", "hint"), BAD_ANSWERS, ids=lambda v: str(v))
def test_bad_answer_names_the_question_and_writes_nothing(
    tmp_path: Path, data: dict[str, Any], question: str, hint: str
) -> None:
    dst = tmp_path / "project"
    with pytest.raises(ValueError, match=question) as caught:
        render(dst, data)
    assert hint in str(caught.value)
    assert not dst.exists() or not any(dst.iterdir())


def test_names_derive_from_the_project_name(tmp_path: Path) -> None:
    project = render(tmp_path / "p", {"project_name": "Order Service v2!"})
    recorded = answers(project)
    assert recorded["project_slug"] == "order-service-v2"
    assert recorded["package_name"] == "order_service_v2"
    assert (project / "src/order_service_v2/app.py").is_file()
    assert "ORDER_SERVICE_V2_SECRET_KEY=" in (project / ".env").read_text()
    assert 'name = "order-service-v2"' in (project / "pyproject.toml").read_text()


# Every combination is rendered with a middling name elsewhere; the extremes go here: a name
# changes line lengths, so ruff could wrap (long) or join (short) what the template wrote.
@pytest.mark.parametrize("package_name", ["a", "a" * 32])
@pytest.mark.parametrize(
    "data",
    [
        {"database": "postgresql", "features": list(FEATURES)},
        {"database": "mysql", "features": ["background_tasks"], "task_queue": "redis"},
    ],
    ids=["all-features", "redis-queue"],
)
def test_shortest_and_longest_package_names_are_lint_clean(
    tmp_path: Path, package_name: str, data: dict[str, Any]
) -> None:
    project = render(tmp_path / "p", {"package_name": package_name, **data})
    for command in (["check"], ["format", "--check"]):
        result = subprocess.run(
            [str(BIN / "ruff"), *command, "--no-cache", "."],
            cwd=project,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_each_render_gets_its_own_secret_only_in_env(tmp_path: Path) -> None:
    first = render(tmp_path / "a")
    second = render(tmp_path / "b")

    def secret(project: Path) -> str:
        line = next(
            line
            for line in (project / ".env").read_text().splitlines()
            if line.startswith("MY_SERVICE_SECRET_KEY=")
        )
        return line.split("=", 1)[1]

    assert secret(first) != secret(second)
    assert len(secret(first)) == 64
    assert secret(first) not in (first / ".copier-answers.yml").read_text()
    assert "change-me" in (first / ".env.example").read_text()
    assert ".env\n" in (first / ".gitignore").read_text()


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_python_version_sets_every_target(tmp_path: Path, python: str) -> None:
    project = render(tmp_path / "p", {"python_version": python})
    pyproject = (project / "pyproject.toml").read_text()
    assert f'requires-python = ">={python}"' in pyproject
    assert f'target-version = "py{python.replace(".", "")}"' in pyproject
    assert f'python_version = "{python}"' in pyproject
    assert (project / ".python-version").read_text().strip() == python


def test_no_tasks_or_extensions_so_no_trust_needed() -> None:
    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "copier.yml").read_text())
    assert "_tasks" not in config
    assert "_jinja_extensions" not in config
    assert config["_subdirectory"] == "template"
    assert ".env" in config["_skip_if_exists"]
