"""Whole-process time of ``copier update`` across one release, all-features project.

    uv run python bench/update_time.py [--runs 7]

Renders the newest release before HEAD (tagged in a temporary clone, as the update tests
do), commits it, then times ``copier update --defaults --vcs-ref HEAD`` on fresh copies.
Prints each run, then median, min and max; the last line is a JSON object. Target: <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import render, run
from tests.releases import git, tagged_clone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        repo, releases = tagged_clone(work / "template")
        head = git("rev-parse", "HEAD", cwd=repo)
        older = [r for r in releases if git("rev-parse", r.tag, cwd=repo) != head]
        if not older:
            sys.exit("no release older than HEAD to update from")
        release = older[-1]
        base = render(
            work / "base", {"project_name": "Bench Update"}, src=repo, vcs_ref=release.tag
        )
        git("init", "-q", cwd=base)
        git("add", "-A", cwd=base)
        git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "render", cwd=base)

        seconds = []
        for number in range(1, args.runs + 1):
            project = work / f"run-{number}"
            shutil.copytree(base, project, symlinks=True)
            started = time.perf_counter()
            run(["copier", "update", "--defaults", "--quiet", "--vcs-ref", "HEAD"], project)
            seconds.append(time.perf_counter() - started)
            changed = git("status", "--porcelain", cwd=project).count("\n") + 1
            print(f"run {number}: {seconds[-1]:.2f} s ({changed} paths changed)")

    figures = {
        "from": release.tag,
        "to": "HEAD",
        "runs": len(seconds),
        "median_s": round(statistics.median(seconds), 3),
        "min_s": round(min(seconds), 3),
        "max_s": round(max(seconds), 3),
        "target_s": 3.0,
    }
    print(
        f"copier update {release.tag} -> HEAD, all features: median {figures['median_s']} s, "
        f"min {figures['min_s']} s, max {figures['max_s']} s (target <= 3 s)"
    )
    print(json.dumps({"update_time": figures}))


if __name__ == "__main__":
    main()
