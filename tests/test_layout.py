"""The rendered layout's rules, read from the import graph (``tests/imports.py``): the core is
flat, each feature is one folder, and a feature touches the core only through the hooks the
core offers, so the core never names a feature but in its two lists (the registry and the
settings mixins), and a feature reaches another only through a ``with_<other>.py`` module."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import render

from .imports import Import, feature_of, graph, imports, modules, sorted_imports

ALL = ["http_client", "uploads", "background_tasks", "observability", "auth"]
FOLDERS = {"http_client", "uploads", "jobs", "observability", "auth"}
# Both choices within a feature: each file of the template is in one of these renders.
VARIANTS = {
    "inprocess-local": {"task_queue": "inprocess", "upload_storage": "local"},
    "redis-s3": {"task_queue": "redis", "upload_storage": "s3"},
}
PACKAGE = "layout_probe"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def package(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Python 3.11 syntax, so the standard library's parser of any Python reads it.
    answers = {
        "project_name": "Layout Probe",
        "python_version": "3.11",
        "features": ALL,
        **VARIANTS[request.param],
    }
    project = render(tmp_path_factory.mktemp("layout") / "project", answers)
    return project / "src" / PACKAGE


def test_each_feature_is_one_folder(package: Path) -> None:
    folders = {p.name for p in (package / "features").iterdir() if p.is_dir()}
    assert folders - {"__pycache__"} == FOLDERS
    flat = {m for m in modules(package) if "." not in m and m}
    assert not flat & {"auth", "http", "jobs", "queue", "runner", "storage", "worker"}, flat
    assert {m.split(".")[1] for m in modules(package) if m.startswith("routers.")} == {
        "health",
        "items",
    }


def test_the_core_names_features_only_in_its_two_lists(package: Path) -> None:
    """``app`` enters the registry; ``settings`` derives from each feature's mixin."""
    wrong = [
        found
        for found in imports(package)
        if feature_of(found.source) is None
        and found.target.startswith("features")
        and not _allowed_core_import(found)
    ]
    assert not wrong, sorted_imports(wrong)


def _allowed_core_import(found: Import) -> bool:
    if found.source == "app":
        return found.target == "features.registry"
    if found.source == "settings":
        return feature_of(found.target) is not None and found.target.endswith(".settings")
    # The registry imports each feature's entry point and glue.
    if found.source == "features.registry":
        last = found.target.rsplit(".", 1)[-1]
        return last == "routes" or last.startswith("with_")
    return False


def test_a_feature_reaches_another_only_through_its_glue(package: Path) -> None:
    wrong = []
    for found in imports(package):
        source, target = feature_of(found.source), feature_of(found.target)
        if source is None or target is None or source == target:
            continue
        glue = found.source.rsplit(".", 1)[-1]
        if glue != f"with_{target}":
            wrong.append(found)
    assert not wrong, sorted_imports(wrong)


def test_a_feature_settings_mixin_imports_only_the_settings_base(package: Path) -> None:
    """What keeps ``settings.py`` -> mixin -> ``settings_base`` free of cycles."""
    wrong = [
        found
        for found in imports(package)
        if found.source.startswith("features.")
        and found.source.endswith(".settings")
        and found.target != "settings_base"
    ]
    assert not wrong, sorted_imports(wrong)


def test_no_import_cycle(package: Path) -> None:
    assert graph(package).cycles() == []
