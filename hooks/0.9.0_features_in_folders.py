"""0.9.0 migration: carry the user's edits of the modules that moved into ``features/``.

0.9.0 moves each optional feature's modules of the project into
``src/<pkg>/features/<name>/``. ``copier update`` has no rename detection: it applies the
user's changes of a moved module to its old path, where they are rejected, then deletes the
old path because the new release does not render it, and writes the release's version at
the new path. This script, run by Copier after the update (``_migrations`` in copier.yml,
stage "after", in the project directory, with Copier's own interpreter), puts them back:
for each move where the user's last commit has the old module and the update removed it,
it 3-way merges the user's version (``git show HEAD:<old>``; ``copier update`` refuses a
dirty tree, so HEAD is the project as it was before the update) with what the previous
release rendered there (rendered again here, as Copier renders its own old copy) into the
new module. Where the user's edit overlaps a line the release changed (mostly import
lines), the new module gets inline conflict markers, recorded in the git index as Copier
records its own conflicts.

It writes only the new paths of moved modules the user had changed, deletes nothing, and
is idempotent (a module already carried over is left as it is). Usage::

    python 0.9.0_features_in_folders.py <package_name> [<answers file>]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import copier
import yaml

VERSION = "0.9.0"
# Old path -> new path, relative to src/<package_name>/.
MOVES = (
    ("features.py", "features/registry.py"),
    ("auth.py", "features/auth/security.py"),
    ("create_superuser.py", "features/auth/create_superuser.py"),
    ("routers/auth.py", "features/auth/routes.py"),
    ("http.py", "features/http_client/client.py"),
    ("routers/upstream.py", "features/http_client/routes.py"),
    ("storage.py", "features/uploads/storage.py"),
    ("storage_local.py", "features/uploads/storage_local.py"),
    ("storage_s3.py", "features/uploads/storage_s3.py"),
    ("upload_stream.py", "features/uploads/stream.py"),
    ("routers/uploads.py", "features/uploads/routes.py"),
    ("jobs.py", "features/jobs/jobs.py"),
    ("runner.py", "features/jobs/runner.py"),
    ("queue.py", "features/jobs/queue.py"),
    ("worker.py", "features/jobs/worker.py"),
    ("routers/tasks.py", "features/jobs/routes.py"),
    ("observability.py", "features/observability/telemetry.py"),
    ("routers/metrics.py", "features/observability/routes.py"),
    ("routers/metrics_http.py", "features/observability/with_http_client.py"),
    ("routers/metrics_jobs.py", "features/observability/with_jobs.py"),
)
# Copier's labels for its own 3-way merges (copier/_main.py, _apply_update).
LABELS = ("before updating", "last update", "after updating")
CONFLICT_START = f"<<<<<<< {LABELS[0]}".encode()
PACKAGE = re.compile(r"^[a-z][a-z0-9_]*$")


class MigrationError(Exception):
    """The migration cannot do its work; the message says what the user can do."""


def say(message: str) -> None:
    print(f"{VERSION} {message}", file=sys.stderr, flush=True)


def git(*args: str, stdin: bytes | None = None, check: bool = True) -> bytes:
    result = subprocess.run(["git", *args], input=stdin, capture_output=True, check=False)
    if check and result.returncode != 0:
        error = result.stderr.decode(errors="replace").strip()
        raise MigrationError(f"`git {' '.join(args)}` failed: {error}")
    return result.stdout


def committed(path: str) -> bytes | None:
    """The content of ``path`` (relative to this directory) in HEAD, or None."""
    result = subprocess.run(
        ["git", "cat-file", "blob", f"HEAD:./{path}"], capture_output=True, check=False
    )
    return result.stdout if result.returncode == 0 else None


def merge(ours: bytes, base: bytes, theirs: bytes) -> tuple[bytes, int]:
    """``git merge-file`` of the three versions: the merged bytes and the conflict count."""
    with tempfile.TemporaryDirectory(prefix="copier-0.9.0-merge-") as tmp:
        files = []
        for name, content in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp, name)
            path.write_bytes(content)
            files.append(str(path))
        labels = [arg for label in LABELS for arg in ("-L", label)]
        result = subprocess.run(
            ["git", "merge-file", "-p", *labels, "--", *files], capture_output=True, check=False
        )
    if result.returncode > 127:  # negative on error; else the number of conflicts
        error = result.stderr.decode(errors="replace").strip()
        raise MigrationError(f"`git merge-file` failed: {error}")
    return result.stdout, result.returncode


class Project:
    """The project being updated (the working directory) and its previous release."""

    def __init__(self, package: str, answers_file: str) -> None:
        self.package = package
        self.answers_file = answers_file
        self._tmp = tempfile.TemporaryDirectory(prefix="copier-0.9.0-old-copy-")

    def close(self) -> None:
        self._tmp.cleanup()

    @cached_property
    def last_answers(self) -> dict[str, Any]:
        text = committed(self.answers_file)
        if text is None:
            raise MigrationError(f"HEAD has no {self.answers_file}: cannot tell the last release")
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict) or not loaded.get("_src_path"):
            raise MigrationError(f"{self.answers_file} in HEAD names no template (_src_path)")
        return loaded

    @cached_property
    def old_copy(self) -> Path:
        """What the release the project was last rendered from renders with its answers (the
        base of the merges; Copier's own old copy is gone by the time migrations run)."""
        answers = self.last_answers
        data = {key: value for key, value in answers.items() if not key.startswith("_")}
        dst = Path(self._tmp.name, "old")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DirtyLocalWarning for a local template
            try:
                copier.run_copy(
                    str(answers["_src_path"]),
                    dst,
                    data=data,
                    vcs_ref=answers.get("_commit"),
                    defaults=True,
                    quiet=True,
                    overwrite=True,
                    skip_tasks=True,
                )
            except Exception as exc:
                raise MigrationError(
                    f"could not render {answers['_src_path']} at {answers.get('_commit')} "
                    f"again (the base of the merge): {exc}"
                ) from exc
        return dst

    def rendered_before(self, path: str) -> bytes | None:
        old = self.old_copy / path
        return old.read_bytes() if old.is_file() else None

    @cached_property
    def prefix(self) -> str:
        """This directory relative to the top of the git work tree ('' or ending in '/')."""
        return git("rev-parse", "--show-prefix").decode().strip()

    def record_conflict(self, path: str, base: bytes, ours: bytes, theirs: bytes) -> None:
        """Stages 1-3 of ``path`` in the index, as Copier records its own conflicts: git status
        lists it as unmerged until the user resolves it and runs ``git add``."""
        mode = "100755" if os.access(path, os.X_OK) else "100644"
        lines = [f"0 {'0' * 40}\t{self.prefix}{path}"]
        for stage, content in ((1, base), (2, ours), (3, theirs)):
            sha = git("hash-object", "-w", "--stdin", stdin=content).decode().strip()
            lines.append(f"{mode} {sha} {stage}\t{self.prefix}{path}")
        git("update-index", "--index-info", stdin="\n".join(lines).encode() + b"\n")

    def carry(self, old: str, new: str) -> None:
        ours = committed(old)
        target = Path(new)
        if ours is None:
            if target.is_file() and committed(new) is None and self.rendered_before(old):
                say(
                    f"moved {old} to {new}: you had deleted {old}, and the update wrote the "
                    f"release's {new}: delete it again if you do not want it"
                )
            return
        if Path(old).exists():
            if target.exists():
                say(
                    f"moved {old} to {new}: your {old}, which the template did not render, is "
                    "left where it is"
                )
            return
        if not target.is_file():
            return  # the update turned the feature off: the module goes, as any other would
        base = self.rendered_before(old)
        if base is None:
            say(
                f"moved {old} to {new}: your {old} is gone from the work tree but the last "
                f"release did not render it; get it back with `git checkout HEAD -- {old}`"
            )
            return
        if ours == base:
            return  # not edited: the release's new module is all there is to it
        theirs = target.read_bytes()
        if CONFLICT_START in theirs.splitlines():
            say(f"moved {old} to {new}: already carried over, with conflicts to resolve")
            return
        merged, conflicts = merge(ours, base, theirs)
        if merged == theirs:
            return  # carried over already (or the release made the same change)
        target.write_bytes(merged)
        if conflicts:
            self.record_conflict(new, base, ours, theirs)
            say(f"moved {old} to {new}: your changes were carried over with conflicts to resolve")
        else:
            say(f"moved {old} to {new}: your changes were carried over")


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or not PACKAGE.match(argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    package = argv[1]
    answers_file = argv[2] if len(argv) == 3 else ".copier-answers.yml"
    project = Project(package, answers_file)
    try:
        for old, new in MOVES:
            project.carry(f"src/{package}/{old}", f"src/{package}/{new}")
    except MigrationError as exc:
        say(
            f"migration failed: {exc}. Your modules as they were before the update are in "
            "HEAD: `git show HEAD:src/<package>/<module>.py` and carry your changes over to "
            "their new paths under features/ by hand."
        )
        return 1
    finally:
        project.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
