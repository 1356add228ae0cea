"""Template releases: found in CHANGELOG.md and git history, planned for a push, tagged in a clone.

A release is a ``## X.Y.Z`` heading in CHANGELOG.md; its commit is the first commit on the
main line (first parents) whose CHANGELOG.md has that heading, and its tag is ``vX.Y.Z``.

One module for every reader: the update tests and ``bench/`` tag a temporary clone with
``tagged_clone`` (tags may not travel with a submission), and the release workflow
(``.github/workflows/release.yml``) decides what a push to main releases with

    python -m tests.releases plan --before SHA --after SHA [--github-output FILE]

and a maintainer lists the tags that releases made before the workflow lack with
``python -m tests.releases missing-tags``. Both need only git, the standard library and
``packaging`` (the ``release`` dependency group).
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CHANGELOG = "CHANGELOG.md"
HEADING = re.compile(r"^## (\d+\.\d+\.\d+)\b", re.MULTILINE)
ANY_HEADING = re.compile(r"^## ", re.MULTILINE)
TAG = re.compile(r"^v(\d+\.\d+\.\d+)$")
NO_COMMIT = re.compile(r"^0+$")  # GitHub's "before" of a push that created the branch


@dataclass(frozen=True)
class Release:
    version: Version
    commit: str

    @property
    def tag(self) -> str:
        return f"v{self.version}"


class ReleaseRefused(Exception):
    """A push whose CHANGELOG.md asks for a release that must not be made."""


@dataclass(frozen=True)
class Plan:
    """What a push releases: a version and its notes, or nothing."""

    version: Version | None
    notes: str = ""

    @property
    def tag(self) -> str:
        return f"v{self.version}" if self.version else ""


def git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def versions(changelog: str) -> list[Version]:
    """The release headings of a CHANGELOG, in the order they appear."""
    return [Version(version) for version in HEADING.findall(changelog)]


def notes(changelog: str, version: Version) -> str:
    """The text of a release's section: after its heading line, up to the next ``## ``."""
    for match in HEADING.finditer(changelog):
        if Version(match.group(1)) == version:
            line_end = changelog.find("\n", match.end())
            start = len(changelog) if line_end < 0 else line_end + 1
            following = ANY_HEADING.search(changelog, start)
            return changelog[start : following.start() if following else len(changelog)].strip()
    msg = f"{CHANGELOG} has no heading for {version}"
    raise LookupError(msg)


def tagged_versions(tags: Iterable[str]) -> set[Version]:
    return {Version(match.group(1)) for tag in tags if (match := TAG.match(tag))}


def plan_release(before: str, after: str, tags: Iterable[str]) -> Plan:
    """Decide what a push releases, from CHANGELOG.md before and after it and the repo's tags.

    A heading the push adds is the release; none, no release. Refused: more than one new
    heading, a version already tagged (a tag is never moved), and a version not greater than
    every earlier release (tagged, or a heading before the push).
    """
    known = set(versions(before))
    new = [version for version in dict.fromkeys(versions(after)) if version not in known]
    if not new:
        return Plan(None)
    if len(new) > 1:
        listed = ", ".join(str(version) for version in new)
        msg = (
            f"the push adds {len(new)} release headings to {CHANGELOG} ({listed}): "
            "release one version per push"
        )
        raise ReleaseRefused(msg)
    version = new[0]
    tagged = tagged_versions(tags)
    if version in tagged:
        msg = (
            f"tag v{version} already exists and a tag is never moved: "
            "give the new heading a greater version"
        )
        raise ReleaseRefused(msg)
    last = max(tagged | known, default=None)
    if last is not None and version <= last:
        msg = (
            f"{CHANGELOG} adds {version}, which is not greater than the last release {last}: "
            f"versions only go up; give the heading a version above {last}"
        )
        raise ReleaseRefused(msg)
    return Plan(version, notes(after, version))


def release_commit(version: Version, repo: Path = ROOT, rev: str = "HEAD") -> str:
    """The first main-line commit up to ``rev`` whose CHANGELOG.md has ``version``'s heading."""
    commits = git(
        "log", "--first-parent", "--format=%H", "--reverse", "-S", f"## {version}", rev,
        "--", CHANGELOG, cwd=repo,
    ).split()  # fmt: skip
    if not commits:
        msg = f"no commit added the {CHANGELOG} heading of {version}"
        raise LookupError(msg)
    return commits[0]


def releases(repo: Path = ROOT) -> list[Release]:
    """Every release named in CHANGELOG.md at HEAD, oldest first."""
    changelog = (repo / CHANGELOG).read_text()
    found = [Release(version, release_commit(version, repo)) for version in versions(changelog)]
    return sorted(found, key=lambda release: release.version)


def untagged_releases(repo: Path = ROOT) -> list[Release]:
    """Releases in CHANGELOG.md whose tag the repository does not have."""
    existing = set(git("tag", "--list", cwd=repo).split())
    return [release for release in releases(repo) if release.tag not in existing]


def tagged_clone(
    dst: Path, src: Path = ROOT, work_tree: Path | None = None
) -> tuple[Path, list[Release]]:
    """Clone the template (work in progress included, as one extra commit) and tag releases.

    The work in progress is read from ``work_tree`` (default: ``src`` itself), e.g. a
    snapshot of it that other renders of the same test run read too.
    A tag the clone already has (fetched from the published repository) is kept, never
    moved; it must point at its release's commit.
    """
    git("clone", "--quiet", str(src), str(dst), cwd=dst.parent)
    pending = git("ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=src)
    names = set(filter(None, pending.split("\0")))
    for name in names:
        source = (work_tree or src) / name
        if source.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / name)
        elif not source.exists() and (dst / name).exists():
            (dst / name).unlink()
    # Files of the last commit that the work tree no longer has (removed or moved with git).
    for name in filter(None, git("ls-files", "-z", cwd=dst).split("\0")):
        if name not in names:
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
    untagged = untagged_releases(dst)
    for release in found:
        if release in untagged:
            git("tag", release.tag, release.commit, cwd=dst)
        elif (tagged := git("rev-list", "-n", "1", release.tag, cwd=dst)) != release.commit:
            msg = (
                f"tag {release.tag} is on {tagged}, but {CHANGELOG} added "
                f"{release.version} in {release.commit}"
            )
            raise LookupError(msg)
    return dst, found


# --- the release workflow's entry point ---------------------------------------------------


def changelog_at(rev: str, repo: Path) -> str:
    try:
        return git("show", f"{rev}:{CHANGELOG}", cwd=repo)
    except subprocess.CalledProcessError:
        return ""


def push_base(before: str, after: str, repo: Path) -> str | None:
    """The commit a push started from: ``before`` if this clone has it, else ``after``'s parent."""
    if not NO_COMMIT.match(before):
        known = subprocess.run(
            ["git", "cat-file", "-e", f"{before}^{{commit}}"], cwd=repo, capture_output=True
        )
        if known.returncode == 0:
            return before
    parent = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{after}^"],
        cwd=repo, capture_output=True, text=True,
    )  # fmt: skip
    return parent.stdout.strip() or None


def plan_push(before: str, after: str, repo: Path = ROOT) -> Plan:
    """``plan_release`` for a pushed range, with the rule that the pushed head is the release
    commit: the CI run that gates the release tested ``after`` and nothing else."""
    after = git("rev-parse", "--verify", f"{after}^{{commit}}", cwd=repo)
    base = push_base(before, after, repo)
    plan = plan_release(
        changelog_at(base, repo) if base else "",
        changelog_at(after, repo),
        git("tag", "--list", cwd=repo).split(),
    )
    if plan.version is not None:
        added_in = release_commit(plan.version, repo, after)
        if added_in != after:
            msg = (
                f"the heading of {plan.version} was added in {added_in}, not in the pushed head "
                f"{after} that the tests ran on: push the release commit last, or tag it by hand "
                "after its tests pass"
            )
            raise ReleaseRefused(msg)
    return plan


def github_output(plan: Plan, commit: str) -> str:
    """The plan as GitHub step outputs (``version``, ``tag``, ``commit``, multi-line ``notes``)."""
    delimiter = f"NOTES_{secrets.token_hex(16)}"
    return (
        f"version={plan.version or ''}\ntag={plan.tag}\ncommit={commit}\n"
        f"notes<<{delimiter}\n{plan.notes}\n{delimiter}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.releases")
    commands = parser.add_subparsers(dest="command", required=True)
    plan_cmd = commands.add_parser("plan", help="what a push to main releases")
    plan_cmd.add_argument("--before", required=True, help="the commit main was on before the push")
    plan_cmd.add_argument("--after", required=True, help="the pushed commit (tested by CI)")
    plan_cmd.add_argument("--repo", type=Path, default=Path.cwd())
    plan_cmd.add_argument("--github-output", type=Path, help="append the plan to this file")
    missing = commands.add_parser(
        "missing-tags", help="print a `git tag` command for each release without its tag"
    )
    missing.add_argument("--repo", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)

    if args.command == "missing-tags":
        for release in untagged_releases(args.repo):
            print(f"git tag {release.tag} {release.commit}")
        return 0

    try:
        plan = plan_push(args.before, args.after, args.repo)
    except ReleaseRefused as refused:
        print(f"::error title=Release refused::{refused}")
        return 1
    commit = git("rev-parse", f"{args.after}^{{commit}}", cwd=args.repo)
    if plan.version is None:
        print(f"No new release heading in {CHANGELOG}: nothing to tag.")
    else:
        print(f"Release {plan.version}: tag {plan.tag} on {commit}\n\n{plan.notes}")
    if args.github_output:
        with args.github_output.open("a") as output:
            output.write(github_output(plan, commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
