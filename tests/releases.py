"""Template releases for the update tests: found in git history, tagged in a temporary clone.

A release is a ``## X.Y.Z`` heading in CHANGELOG.md; its commit is the one that added that
heading. Tags may not travel with a submission, so the tests tag a clone themselves.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

from harness import ROOT

HEADING = re.compile(r"^## (\d+\.\d+\.\d+)\b", re.MULTILINE)


@dataclass(frozen=True)
class Release:
    version: Version
    commit: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def releases(repo: Path = ROOT) -> list[Release]:
    """Every release named in CHANGELOG.md at HEAD, oldest first."""
    changelog = (repo / "CHANGELOG.md").read_text()
    found = []
    for version in HEADING.findall(changelog):
        commits = git(
            "log", "--format=%H", "--reverse", "-S", f"## {version}", "--", "CHANGELOG.md", cwd=repo
        ).split()
        if not commits:
            msg = f"no commit added the CHANGELOG heading of {version}"
            raise LookupError(msg)
        found.append(Release(Version(version), commits[0]))
    return sorted(found, key=lambda release: release.version)


def tagged_clone(dst: Path) -> tuple[Path, list[Release]]:
    """Clone the template (work in progress included, as one extra commit) and tag releases."""
    git("clone", "--quiet", str(ROOT), str(dst), cwd=dst.parent)
    pending = git("ls-files", "--cached", "--others", "--exclude-standard", "-z").split("\0")
    for name in filter(None, pending):
        source = ROOT / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
        elif not source.exists() and (dst / name).exists():
            (dst / name).unlink()
    git("add", "-A", cwd=dst)
    if git("status", "--porcelain", cwd=dst):
        git(
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "commit",
            "-qm",
            "work in progress",
            cwd=dst,
        )
    found = releases(dst)
    for release in found:
        git("tag", release.tag, release.commit, cwd=dst)
    return dst, found
