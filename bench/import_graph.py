"""The rendered package's import graph, at HEAD and at the newest release before it.

    uv run python bench/import_graph.py [--ref 0.8.0]

Renders both with every feature on (Python 3.11 syntax, so the standard library's parser
reads every Python's render) and prints, per render: modules, import edges between them,
layers (the longest chain of imports, in modules) and cycles; then the same with each
feature counted as one unit. At HEAD a feature's unit is its folder, ``features/<name>/``;
before 0.9.0 it is the modules the feature rendered (``OLD_UNITS``). Also at HEAD, with each
feature's settings mixin as a unit of its own: the one part of a feature the core imports
(``settings.py`` derives ``Settings`` from it), a leaf that imports only ``settings_base``.
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import render
from tests.imports import Graph, graph, unit_of
from tests.releases import Release, git, tagged_clone

ANSWERS = {
    "project_name": "Graph Probe",
    "python_version": "3.11",
    "database": "sqlite",
    "features": ["http_client", "uploads", "background_tasks", "observability", "auth"],
}
# Before 0.9.0: the top-level modules of each feature (the draft of issue 23).
OLD_UNITS = {
    "auth": "auth",
    "create_superuser": "auth",
    "routers.auth": "auth",
    "http": "http_client",
    "routers.upstream": "http_client",
    "storage": "uploads",
    "storage_local": "uploads",
    "storage_s3": "uploads",
    "upload_stream": "uploads",
    "routers.uploads": "uploads",
    "jobs": "jobs",
    "runner": "jobs",
    "queue": "jobs",
    "worker": "jobs",
    "routers.tasks": "jobs",
    "observability": "observability",
    "routers.metrics": "observability",
    "routers.metrics_http": "observability",
    "routers.metrics_jobs": "observability",
}


def old_unit(module: str) -> str:
    return f"feature {OLD_UNITS[module]}" if module in OLD_UNITS else module


def settings_apart(module: str) -> str:
    if module.startswith("features.") and module.endswith(".settings"):
        return module
    return unit_of(module)


def figures(g: Graph) -> dict[str, object]:
    return {
        "nodes": len(g.nodes),
        "edges": len(g.edges),
        "layers": g.layers(),
        "cycles": g.cycles(),
    }


def show(label: str, found: dict[str, object]) -> None:
    cycles = found["cycles"]
    described = f"{len(cycles)} ({', '.join('/'.join(c) for c in cycles)})" if cycles else "none"  # type: ignore[arg-type]
    print(
        f"{label:<46} {found['nodes']:>3} nodes  {found['edges']:>3} edges  "
        f"{found['layers']:>2} layers  cycles: {described}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ref", help="the release to compare with (default: the newest before HEAD)"
    )
    args = parser.parse_args(argv)
    result: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="import-graph-") as tmp:
        work = Path(tmp)
        repo, found = tagged_clone(work / "repo")
        head = git("rev-parse", "HEAD", cwd=repo)
        older: list[Release] = [r for r in found if r.commit != head]
        release = next(r for r in older if str(r.version) == args.ref) if args.ref else older[-1]
        package = "graph_probe"
        views: list[tuple[str, str, Callable[[str], str]]] = [
            (release.tag, "modules", lambda m: m),
            (release.tag, "features as units", old_unit),
            ("HEAD", "modules", lambda m: m),
            ("HEAD", "features as units (folders)", unit_of),
            ("HEAD", "features as units, settings mixins apart", settings_apart),
        ]
        for ref in (release.tag, "HEAD"):
            render(work / ref, ANSWERS, src=repo, vcs_ref=ref)
        for ref, view, unit in views:
            numbers = figures(graph(work / ref / "src" / package, unit))
            show(f"{ref}: {view}", numbers)
            result[f"{ref}: {view}"] = numbers
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
