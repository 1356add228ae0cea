"""Whole-process time of ``copier copy`` and of ``copier update`` across one release, all features.

    uv run python bench/update_time.py [--runs 7] [--render-runs 9]

Tags a temporary clone of the template (work in progress included, as the update tests do).

Render: runs ``copier copy --defaults --quiet --vcs-ref HEAD`` into fresh directories and reads
each run's CPU time (user + system, git's children included) from the kernel; next to it the
same for what no template can save: starting Python and importing Copier (``import
copier._cli``) and copying a template of one plain file and no questions. Goal: <= 0.7 s CPU.

Update: renders the newest release before HEAD, commits it, then times ``copier update
--defaults --vcs-ref HEAD`` on fresh copies: wall time, and CPU time (less inflated by a loaded
machine). Goal: <= 2.5 s median.

Prints each run, then medians with min and max and the load average; the last line is a JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from harness import BIN, render
from tests.releases import Release, git, tagged_clone

RENDER_GOAL_CPU_S = 0.7
UPDATE_GOAL_S = 2.5


def timed(cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system, children included) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def stats(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def minimal_template(path: Path) -> Path:
    """A git template with one plain file and no questions: Copier's own cost of a copy."""
    (path / "template").mkdir(parents=True)
    (path / "copier.yml").write_text("_subdirectory: template\n")
    (path / "template/README.md").write_text("plain\n")
    git("init", "-q", cwd=path)
    git("add", "-A", cwd=path)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "minimal", cwd=path)
    return path


def copies(src: Path, work: Path, name: str, runs: int) -> list[float]:
    cpu = []
    for run in range(1, runs + 1):
        dst = work / f"{name}-{run}"
        cmd = [str(BIN / "copier"), "copy", "--defaults", "--quiet", "--vcs-ref", "HEAD"]
        wall, seconds = timed([*cmd, str(src), str(dst)], work)
        files = sum(1 for p in dst.rglob("*") if p.is_file())
        print(f"copy {name} {run}: {seconds:.3f} s CPU, {wall:.3f} s wall ({files} files)")
        cpu.append(seconds)
    return cpu


def render_time(repo: Path, work: Path, runs: int) -> dict[str, object]:
    python = str(BIN / "python")
    imports = [timed([python, "-c", "import copier._cli"], work)[1] for _ in range(runs)]
    minimal = copies(minimal_template(work / "minimal"), work, "one-file template", runs)
    ours = copies(repo, work, "all features", runs)
    figures: dict[str, object] = {
        "runs": runs,
        "cpu_s": stats(ours),
        "one_file_template_cpu_s": stats(minimal)["median"],
        "import_copier_cpu_s": stats(imports)["median"],
        "goal_cpu_s": RENDER_GOAL_CPU_S,
    }
    median = stats(ours)["median"]
    print(
        f"copier copy, all features: median {median} s CPU [{min(ours):.3f}-{max(ours):.3f}] "
        f"(goal <= {RENDER_GOAL_CPU_S} s: {'met' if median <= RENDER_GOAL_CPU_S else 'missed'}); "
        f"a one-file template {figures['one_file_template_cpu_s']} s, of which Python and "
        f"importing Copier {figures['import_copier_cpu_s']} s"
    )
    return figures


def update_time(repo: Path, work: Path, releases: list[Release], runs: int) -> dict[str, object]:
    head = git("rev-parse", "HEAD", cwd=repo)
    older = [r for r in releases if git("rev-parse", r.tag, cwd=repo) != head]
    if not older:
        sys.exit("no release older than HEAD to update from")
    release = older[-1]
    base = render(work / "base", {"project_name": "Bench Update"}, src=repo, vcs_ref=release.tag)
    git("init", "-q", cwd=base)
    git("add", "-A", cwd=base)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "render", cwd=base)

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    walls, cpus = [], []
    for run in range(1, runs + 1):
        project = work / f"run-{run}"
        shutil.copytree(base, project, symlinks=True)
        # --trust: an update across 0.9.0 runs its migration (hooks/README.md).
        cmd = ["copier", "update", "--defaults", "--quiet", "--trust", "--vcs-ref", "HEAD"]
        wall, cpu = timed(cmd, project, env)
        walls.append(wall)
        cpus.append(cpu)
        changed = git("status", "--porcelain", cwd=project).count("\n") + 1
        print(f"update {run}: {wall:.2f} s, {cpu:.2f} s CPU ({changed} paths changed)")

    figures: dict[str, object] = {
        "from": release.tag,
        "to": "HEAD",
        "runs": runs,
        "wall_s": stats(walls),
        "cpu_s": stats(cpus),
        "goal_s": UPDATE_GOAL_S,
    }
    median = stats(walls)["median"]
    print(
        f"copier update {release.tag} -> HEAD, all features: median {median} s "
        f"[{min(walls):.2f}-{max(walls):.2f}], CPU {stats(cpus)['median']} s "
        f"(goal <= {UPDATE_GOAL_S} s: {'met' if median <= UPDATE_GOAL_S else 'missed'})"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="updates")
    parser.add_argument("--render-runs", type=int, default=9, help="copies (0: none)")
    args = parser.parse_args()

    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-update-") as tmp:
        work = Path(tmp)
        repo, releases = tagged_clone(work / "template")
        if args.render_runs:
            figures["render_time"] = render_time(repo, work, args.render_runs)
        figures["update_time"] = update_time(repo, work, releases, args.runs)
    figures["load_average"] = round(os.getloadavg()[0], 2)
    print(f"load average at the end: {figures['load_average']} on {os.cpu_count()} CPUs")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
