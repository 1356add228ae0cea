"""A stand-in for the GitHub CLI (``gh``) over a JSON file of tags and releases.

Run by tests/test_release_workflow.py as ``gh`` on PATH, to drive the release workflow's
publish script. It answers the calls that script makes as GitHub does: reading a ref that
does not exist is a 404, creating one that exists is a 422, ``release create --verify-tag``
needs the tag. Every call is recorded in the file's ``calls``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import NoReturn


def main(args: list[str]) -> NoReturn:
    path = Path(os.environ["FAKE_GH_STATE"])
    state = json.loads(path.read_text())
    state["calls"].append(args)
    repo = os.environ["GITHUB_REPOSITORY"]

    def done(code: int, out: str = "", err: str = "") -> NoReturn:
        path.write_text(json.dumps(state))
        sys.stdout.write(out)
        sys.stderr.write(err)
        sys.exit(code)

    if args[:3] == ["api", "--method", "POST"] and args[3] == f"repos/{repo}/git/refs":
        fields = dict(arg.split("=", 1) for arg in args[4:] if arg != "-f")
        tag = fields["ref"].removeprefix("refs/tags/")
        if tag in state["refs"]:
            done(1, err="gh: Reference already exists (HTTP 422)\n")
        state["refs"][tag] = fields["sha"]
        done(0, out="{}\n")
    prefix = f"repos/{repo}/git/ref/tags/"
    if args[:1] == ["api"] and args[1].startswith(prefix) and args[2:] == ["--jq", ".object.sha"]:
        tag = args[1].removeprefix(prefix)
        if tag in state["refs"]:
            done(0, out=state["refs"][tag] + "\n")
        done(1, err="gh: Not Found (HTTP 404)\n")
    if args[:2] == ["release", "view"] and args[3:] == ["--repo", repo]:
        done(0 if args[2] in state["releases"] else 1, err="release not found\n")
    if args[:2] == ["release", "create"] and "--verify-tag" in args:
        tag = args[2]
        if tag not in state["refs"] or tag in state["releases"]:
            done(1, err=f"gh: cannot create release {tag}\n")
        state["releases"][tag] = Path(args[args.index("--notes-file") + 1]).read_text()
        done(0)
    done(2, err=f"fake gh: unexpected call {args}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
