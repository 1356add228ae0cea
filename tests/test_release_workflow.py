"""The release workflow: what a push to main releases (tests/releases.py) and how it tags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.version import Version

from .releases import (
    ROOT,
    Plan,
    ReleaseRefused,
    git,
    main,
    notes,
    plan_push,
    plan_release,
    releases,
    tagged_clone,
)

WORKFLOWS = ROOT / ".github/workflows"
HEAD = "# Changelog\n\nReleases are PEP 440 versions, tagged `vX.Y.Z`.\n\n## Unreleased\n\n"
OLD = "## 0.2.0 - 2026-11-02\n\n### Fixed\n- a fix\n\n## 0.1.0 - 2026-11-01\n\nFirst.\n"
NEW = "## 0.3.0 - 2026-12-02\n\nFaster renders.\n\n### Added\n- a release workflow\n\n"


def changelog(*sections: str) -> str:
    return HEAD + "".join(sections)


def test_a_new_heading_is_released_with_its_section_as_notes() -> None:
    plan = plan_release(changelog(OLD), changelog(NEW, OLD), ["v0.1.0", "v0.2.0"])
    assert plan == Plan(Version("0.3.0"), "Faster renders.\n\n### Added\n- a release workflow")
    assert plan.tag == "v0.3.0"


def test_an_unchanged_heading_releases_nothing() -> None:
    before = changelog("- work in progress\n\n", OLD)
    after = changelog("- more work in progress\n\n", OLD)
    assert plan_release(before, after, ["v0.2.0"]) == Plan(None)
    assert plan_release(before, after, []).tag == ""


def test_a_version_going_backwards_is_refused() -> None:
    backwards = "## 0.1.5 - 2026-12-02\n\nOlder than 0.2.0.\n\n"
    with pytest.raises(ReleaseRefused, match=r"0\.1\.5, which is not greater than .* 0\.2\.0"):
        plan_release(changelog(OLD), changelog(backwards, OLD), ["v0.1.0", "v0.2.0"])


def test_a_version_not_greater_than_the_last_tag_is_refused() -> None:
    """The last release may be a tag whose heading is gone from CHANGELOG.md."""
    with pytest.raises(ReleaseRefused, match=r"not greater than the last release 0\.4\.0"):
        plan_release(changelog(OLD), changelog(NEW, OLD), ["v0.2.0", "v0.4.0", "nightly"])


def test_an_existing_tag_is_never_reused() -> None:
    with pytest.raises(ReleaseRefused, match=r"tag v0\.3\.0 already exists"):
        plan_release(changelog(OLD), changelog(NEW, OLD), ["v0.2.0", "v0.3.0"])


def test_one_release_per_push() -> None:
    two = "## 0.4.0 - 2026-12-03\n\nMore.\n\n"
    with pytest.raises(ReleaseRefused, match=r"adds 2 release headings .*0\.4\.0, 0\.3\.0"):
        plan_release(changelog(OLD), changelog(two, NEW, OLD), [])


def test_notes_of_the_last_section_run_to_the_end() -> None:
    assert notes(changelog(NEW, OLD), Version("0.1.0")) == "First."
    assert notes("## 1.0.0", Version("1.0.0")) == ""


def test_notes_come_from_the_real_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    section = notes(text, Version("0.3.1"))
    assert section.startswith("### Fixed")
    assert section.endswith("must use `SessionDep`.")
    assert not re.search(r"^## ", section, re.MULTILINE)


# --- a pushed range in a git repository, as the workflow sees it --------------------------


def commit(repo: Path, text: str, message: str) -> str:
    (repo / "CHANGELOG.md").write_text(text)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qm", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A template repository whose 0.2.0 is tagged; 0.1.0 predates tags."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    commit(repo, changelog(OLD[OLD.index("## 0.1.0") :]), "release 0.1.0")
    released = commit(repo, changelog(OLD), "release 0.2.0")
    git("tag", "v0.2.0", released, cwd=repo)
    return repo


def test_push_adding_a_heading_plans_its_tag_for_the_workflow(repo: Path, tmp_path: Path) -> None:
    before = git("rev-parse", "HEAD", cwd=repo)
    after = commit(repo, changelog(NEW, OLD), "release 0.3.0")
    output = tmp_path / "github-output"
    args = ["plan", "--before", before, "--after", after, "--repo", str(repo)]

    assert main([*args, "--github-output", str(output)]) == 0

    text = output.read_text()
    assert f"version=0.3.0\ntag=v0.3.0\ncommit={after}\n" in text
    delimiter = re.search(r"^notes<<(\S+)$", text, re.MULTILINE)
    assert delimiter
    body = text.split(f"notes<<{delimiter[1]}\n")[1].split(f"\n{delimiter[1]}\n")[0]
    assert body == notes(changelog(NEW, OLD), Version("0.3.0"))


def test_push_without_a_heading_plans_nothing(repo: Path, tmp_path: Path) -> None:
    before = git("rev-parse", "HEAD", cwd=repo)
    after = commit(repo, changelog("- unreleased work\n\n", OLD), "work")
    output = tmp_path / "github-output"
    args = ["plan", "--before", before, "--after", after, "--repo", str(repo)]
    assert main([*args, "--github-output", str(output)]) == 0
    assert output.read_text().startswith("version=\ntag=\n")


def test_push_going_backwards_fails_and_leaves_the_tag(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tagged = git("rev-parse", "v0.2.0", cwd=repo)
    before = git("rev-parse", "HEAD", cwd=repo)
    after = commit(repo, changelog("## 0.2.0 - again\n\nSame version.\n\n", OLD), "re-release")
    after = commit(repo, changelog("## 0.1.9\n\nBackwards.\n\n", OLD), "backwards")

    assert main(["plan", "--before", before, "--after", after, "--repo", str(repo)]) == 1

    assert "::error title=Release refused::" in capsys.readouterr().out
    assert git("rev-parse", "v0.2.0", cwd=repo) == tagged


def test_push_whose_head_did_not_add_the_heading_is_refused(repo: Path) -> None:
    """CI tested the pushed head only; the tag goes on the commit that added the heading
    (as for the update tests), so the two must be the same commit."""
    before = git("rev-parse", "HEAD", cwd=repo)
    added = commit(repo, changelog(NEW, OLD), "release 0.3.0")
    after = commit(repo, changelog("- next\n\n", NEW, OLD), "more work")
    with pytest.raises(ReleaseRefused, match=f"added in {added}, not in the pushed head {after}"):
        plan_push(before, after, repo)


def test_missing_tags_names_each_untagged_release_once(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["missing-tags", "--repo", str(repo)]) == 0
    first = releases(repo)[0]
    assert capsys.readouterr().out == f"git tag v0.1.0 {first.commit}\n"


def test_first_push_of_a_branch_compares_with_the_parent(repo: Path) -> None:
    after = commit(repo, changelog(NEW, OLD), "release 0.3.0")
    assert plan_push("0" * 40, after, repo).version == Version("0.3.0")


def test_a_merge_commit_that_adds_the_heading_is_the_release_commit(repo: Path) -> None:
    """The main engineer merges branches: the merge is what was pushed and tested."""
    before = git("rev-parse", "HEAD", cwd=repo)
    git("checkout", "-q", "-b", "release", cwd=repo)
    commit(repo, changelog(NEW, OLD), "release 0.3.0 on a branch")
    git("checkout", "-q", "main", cwd=repo)
    (repo / "other.txt").write_text("main moved on\n")
    git("add", "-A", cwd=repo)
    git("-c", "user.name=m", "-c", "user.email=m@m", "commit", "-qm", "other", cwd=repo)
    git("-c", "user.name=m", "-c", "user.email=m@m", "merge", "-q", "--no-ff", "release", cwd=repo)
    merge = git("rev-parse", "HEAD", cwd=repo)

    assert plan_push(before, merge, repo).version == Version("0.3.0")
    assert releases(repo)[-1].commit == merge


# --- the update tests' clone keeps published tags ----------------------------------------


def test_tagged_clone_keeps_a_tag_it_already_has(repo: Path, tmp_path: Path) -> None:
    """Once releases are published, a clone has their tags: kept, and the rest made."""
    published = git("rev-parse", "v0.2.0", cwd=repo)
    clone, found = tagged_clone(tmp_path / "clone", src=repo)
    assert [str(release.version) for release in found] == ["0.1.0", "0.2.0"]
    assert git("rev-parse", "v0.2.0", cwd=clone) == published
    assert git("rev-parse", "v0.1.0", cwd=clone) == found[0].commit != published


def test_tagged_clone_refuses_a_tag_that_disagrees_with_the_changelog(
    repo: Path, tmp_path: Path
) -> None:
    git("tag", "v0.1.0", "v0.2.0", cwd=repo)
    with pytest.raises(LookupError, match=r"tag v0\.1\.0 is on .* added 0\.1\.0 in"):
        tagged_clone(tmp_path / "clone", src=repo)


# --- the workflow files ---------------------------------------------------------------------


def load(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def test_release_runs_only_after_the_tests_of_a_push_to_main() -> None:
    job = load("template.yml")["jobs"]["release"]
    assert job["needs"] == "test"
    assert job["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    assert job["uses"] == "$/.github/workflows/release.yml"
    assert job["permissions"] == {"contents": "write"}


def test_only_the_publishing_job_may_write() -> None:
    workflow = load("release.yml")
    assert workflow[True] == {"workflow_call": None}  # YAML reads the key `on` as True
    assert workflow["permissions"] == {}
    jobs = workflow["jobs"]
    assert jobs["plan"]["permissions"] == {"contents": "read"}
    assert jobs["publish"]["permissions"] == {"contents": "write"}
    assert jobs["publish"]["needs"] == "plan"
    assert "steps" in jobs["publish"]
    assert not any("uses" in step for step in jobs["publish"]["steps"])


def test_the_plan_step_runs_the_shared_release_code() -> None:
    steps = load("release.yml")["jobs"]["plan"]["steps"]
    (run,) = [step["run"] for step in steps if "run" in step]
    assert "python -m tests.releases plan" in run
    assert "--only-group release" in run


def publish(
    tmp_path: Path, refs: dict[str, str], releases_: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run the publish step's script as GitHub would, with the fake ``gh`` on PATH."""
    (step,) = load("release.yml")["jobs"]["publish"]["steps"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    gh = bin_dir / "gh"
    gh.write_text(
        f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).parent / "fake_gh.py"}" "$@"\n'
    )
    gh.chmod(0o755)
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"refs": refs, "releases": releases_, "calls": []}))
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GH_STATE": str(state),
        "GITHUB_REPOSITORY": "org/template",
        "RUNNER_TEMP": str(tmp_path),
        "GH_TOKEN": "token",
        "TAG": "v0.3.0",
        "COMMIT": "a" * 40,
        "NOTES": "Faster renders.\n\n### Added\n- a release workflow",
    }
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result, json.loads(state.read_text())


def posts(state: dict[str, Any]) -> list[list[str]]:
    return [call for call in state["calls"] if "POST" in call]


def test_publish_creates_the_tag_and_the_release(tmp_path: Path) -> None:
    result, state = publish(tmp_path, {"v0.2.0": "b" * 40}, {"v0.2.0": "old"})
    assert result.returncode == 0, result.stderr
    assert state["refs"] == {"v0.2.0": "b" * 40, "v0.3.0": "a" * 40}
    assert state["releases"]["v0.3.0"] == "Faster renders.\n\n### Added\n- a release workflow\n"


def test_publish_rerun_finds_its_own_tag_and_only_adds_the_release(tmp_path: Path) -> None:
    result, state = publish(tmp_path, {"v0.3.0": "a" * 40}, {})
    assert result.returncode == 0, result.stderr
    assert posts(state) == []
    assert "v0.3.0" in state["releases"]
    result, state = publish(tmp_path, {"v0.3.0": "a" * 40}, {"v0.3.0": "notes"})
    assert result.returncode == 0, result.stderr
    assert [call[:2] for call in state["calls"]][1:] == [["release", "view"]]


def test_publish_never_moves_a_tag(tmp_path: Path) -> None:
    result, state = publish(tmp_path, {"v0.3.0": "c" * 40}, {})
    assert result.returncode == 1
    assert f"::error title=Release refused::tag v0.3.0 is on {'c' * 40}" in result.stdout
    assert state["refs"] == {"v0.3.0": "c" * 40}
    assert posts(state) == []
    assert state["releases"] == {}


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflow_actions_pinned_and_no_expressions_in_run(path: Path) -> None:
    workflow = yaml.safe_load(path.read_text())
    for name, job in workflow["jobs"].items():
        for step in job.get("steps", []):
            if "uses" in step:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", step["uses"]), (name, step)
                if step["uses"].startswith("actions/checkout@"):
                    assert step["with"]["persist-credentials"] is False
            if "run" in step:
                assert "${{" not in step["run"], f"{path.name} {name}: pass it through env"
    for line in path.read_text().splitlines():
        if re.search(r"uses: [\w.-]+/[\w.-]+@", line):
            assert re.search(r"@[0-9a-f]{40}  # v\d+\.\d+\.\d+$", line), line
