"""deploy/k8s in every combination: valid Kubernetes objects, and what a schema cannot check.

Render only (no ``uv sync``), so it stays cheap enough for every combination. Each manifest
is validated with kubernetes-validate in strict mode (an unknown or misplaced field fails)
against ``KUBERNETES_VERSION``; the other tests hold the manifests to the rendered app:
probes on its health routes, ports, setting names under its env prefix, the Secret only
referenced, graceful termination longer than the app's own shutdown, and the objects each
answer calls for.
"""

from __future__ import annotations

import ast
import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from harness import (
    DEFAULT_PYTHON,
    FACTORED_FEATURES,
    FACTORS,
    FEATURES,
    Combo,
    all_combos,
)

from .checks import FEATURE_TRACES, LEFTOVER_JINJA, QUEUE_TRACES, S3_TRACES, Renders

# The manifests depend only on the database, the jobs (off, in-process, Redis queue) and the
# uploads (off, local, S3): 27 answer sets, each checked once, with the other options off
# (the strictest: every variable must then be a setting of the smallest Settings, and no
# word of an off feature may appear). That nothing else changes them is checked below.
MANIFEST_FACTORS = ("database", "jobs", "uploads")
ALL_COMBOS = [
    Combo.from_factors(
        {"database": database, "jobs": jobs, "uploads": uploads, "python": DEFAULT_PYTHON}
        | {feature: "off" for feature in FEATURES if feature not in FACTORED_FEATURES}
    )
    for database in FACTORS["database"]
    for jobs in FACTORS["jobs"]
    for uploads in FACTORS["uploads"]
]

# The oldest minor the manifests must apply to; every field they use is GA there. Newer
# minors only add fields, so what validates here applies to them too.
KUBERNETES_VERSION = "1.33.0"
K8S = Path("deploy/k8s")
SECRET_NAME = "{slug}-secrets"
ALWAYS = {"kustomization.yaml", "configmap.yaml", "deployment.yaml", "service.yaml"}
WORKLOADS = ("Deployment", "Job")


@dataclass(frozen=True)
class Rendered:
    combo: Combo
    root: Path
    slug: str
    prefix: str
    fields: frozenset[str]  # Settings field names, lowercase
    manifests: dict[str, list[dict[str, Any]]]  # file name -> its objects

    def objects(self, kind: str | None = None) -> list[dict[str, Any]]:
        docs = [
            d for name, ds in self.manifests.items() if name != "kustomization.yaml" for d in ds
        ]
        return [d for d in docs if kind is None or d["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [d for d in self.objects(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]

    @property
    def api(self) -> dict[str, Any]:
        return self.one("Deployment", self.slug)

    @property
    def config(self) -> dict[str, str]:
        data: dict[str, str] = self.one("ConfigMap", f"{self.slug}-config")["data"]
        return data

    @property
    def single_replica(self) -> bool:
        """SQLite, uploads on the pod's disk or in-process jobs: one API replica."""
        features = self.combo.features
        in_process = "background_tasks" in features and not self.combo.redis_queue
        local_uploads = "uploads" in features and not self.combo.s3_uploads
        return self.combo.database == "sqlite" or local_uploads or in_process

    @property
    def data_volume(self) -> bool:
        local_uploads = "uploads" in self.combo.features and not self.combo.s3_uploads
        return self.combo.database == "sqlite" or local_uploads


def settings_fields(package: Path) -> tuple[str, frozenset[str]]:
    """The env prefix and the field names of the rendered ``Settings``: its own, its base's
    (settings_base.py) and each feature's mixin (features/<name>/settings.py)."""
    modules = [package / "settings.py", package / "settings_base.py"]
    modules += sorted(package.glob("features/*/settings.py"))
    fields = {
        n.target.id
        for module in modules
        for cls in ast.parse(module.read_text()).body
        if isinstance(cls, ast.ClassDef)
        for n in cls.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    fields.discard("model_config")
    match = re.search(r'env_prefix="([A-Z0-9_]+)"', (package / "settings_base.py").read_text())
    assert match, "no env_prefix in settings_base.py"
    return match.group(1), frozenset(fields)


def route_paths(router_py: Path) -> set[str]:
    """Paths a router module serves: its ``APIRouter(prefix=...)`` + each ``@router.get``."""
    tree = ast.parse(router_py.read_text())
    prefix = ""
    paths: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "APIRouter":
            prefix = next(ast.literal_eval(k.value) for k in node.keywords if k.arg == "prefix")
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "attr", None) == "get":
                    paths.append(ast.literal_eval(deco.args[0]))
    return {prefix + p for p in paths}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def disk_paths(project: Rendered, *, api: bool) -> list[Path]:
    """Absolute paths the settings point the app at: the SQLite file, the upload directory."""
    keys = ["DATABASE_URL", "UPLOAD_DIR"] if api else ["DATABASE_URL"]
    values = [project.config.get(f"{project.prefix}{key}", "") for key in keys]
    paths = [value.split(":///", 1)[-1] for value in values]
    return [Path(path) for path in paths if path.startswith("/")]


def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.fixture(scope="module", params=ALL_COMBOS, ids=lambda c: c.id)
def project(request: pytest.FixtureRequest, renders: Renders) -> Rendered:
    combo: Combo = request.param
    root = renders.get(combo)
    prefix, fields = settings_fields(root / f"src/{combo.package}")
    manifests = {
        p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        for p in sorted((root / K8S).iterdir())
    }
    slug = yaml.safe_load((root / ".copier-answers.yml").read_text())["project_slug"]
    return Rendered(combo, root, slug, prefix, fields, manifests)


def test_every_manifest_is_a_valid_kubernetes_object(project: Rendered) -> None:
    for name, docs in project.manifests.items():
        assert name.endswith(".yaml"), f"{name}: only YAML belongs in {K8S}"
        text = (project.root / K8S / name).read_text()
        assert not LEFTOVER_JINJA.search(text), f"leftover Jinja in {name}"
        if name == "kustomization.yaml":
            continue
        assert len(docs) == 1, f"{name}: one object per file"
        try:
            kubernetes_validate.validate(docs[0], KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{name}: {exc.message} at {path or 'top level'}", pytrace=False)


def test_objects_follow_the_answers(project: Rendered) -> None:
    combo = project.combo
    expected = set(ALWAYS)
    if combo.database != "sqlite":
        expected.add("migrate-job.yaml")
    if not project.single_replica:
        expected |= {"hpa.yaml", "pdb.yaml"}
    if combo.redis_queue:
        expected.add("worker-deployment.yaml")
    if project.data_volume:
        expected.add("data-pvc.yaml")
    assert set(project.manifests) == expected

    banned = [w for f in FEATURES if f not in combo.features for w in FEATURE_TRACES[f]]
    if not combo.redis_queue:
        banned += QUEUE_TRACES
    if not combo.s3_uploads:
        banned += S3_TRACES
    for name in project.manifests:
        text = (project.root / K8S / name).read_text().lower()
        for word in banned:
            assert word.lower() not in text, f"{word!r} left in {name}"

    spec = project.api["spec"]
    if project.single_replica:
        assert spec["replicas"] == 1
        assert spec["strategy"]["type"] == "Recreate", "two API pods would overlap"
    else:
        assert "replicas" not in spec, "the HPA owns the count; apply would reset it"
        hpa = project.one("HorizontalPodAutoscaler", project.slug)
        assert hpa["spec"]["scaleTargetRef"]["name"] == project.slug
        assert hpa["spec"]["minReplicas"] >= 2
        pdb = project.one("PodDisruptionBudget", project.slug)
        assert pdb["spec"]["selector"] == spec["selector"]


def test_kustomization_lists_every_manifest_and_names_the_image(project: Rendered) -> None:
    (kustomization,) = project.manifests["kustomization.yaml"]
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == set(project.manifests) - {"kustomization.yaml"}
    images = {image["name"] for image in kustomization["images"]}
    for workload in project.objects("Deployment") + project.objects("Job"):
        for container in containers(workload):
            assert container["image"] in images, f"{container['name']}: image not in images:"


def test_selectors_match_their_pods(project: Rendered) -> None:
    service = project.one("Service", project.slug)
    api_labels = project.api["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= api_labels.items()
    for workload in project.objects("Deployment"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        assert workload["metadata"]["labels"]["app.kubernetes.io/component"] in {"api", "worker"}


def test_probes_point_at_the_health_routes(project: Rendered) -> None:
    routes = route_paths(project.root / f"src/{project.combo.package}/routers/health.py")
    (api,) = pod_spec(project.api)["containers"]
    probes = {
        kind: api[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    for kind, probe in probes.items():
        assert probe["path"] in routes, f"{kind} on {probe['path']}, not a route of the app"
        assert probe["port"] in {p["name"] for p in api["ports"]} | {
            p["containerPort"] for p in api["ports"]
        }
    # Liveness must touch nothing (a database outage must not restart every pod).
    assert probes["livenessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"


def test_ports_match_the_app_and_the_service(project: Rendered) -> None:
    config = project.config
    (api,) = pod_spec(project.api)["containers"]
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    dockerfile = (project.root / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    assert exposed
    app_port = int(config[f"{project.prefix}PORT"])
    assert set(ports.values()) == {app_port} == {int(exposed.group(1))}
    assert config[f"{project.prefix}HOST"] == "0.0.0.0", "a loopback host fails every probe"
    for port in project.one("Service", project.slug)["spec"]["ports"]:
        target = port["targetPort"]
        assert ports.get(target, target) == app_port, f"Service targets {target}"


def test_containers_fail_closed_and_believe_only_private_proxies(project: Rendered) -> None:
    """The image and the manifests run as production (whose guards refuse the example
    secret), and believe X-Forwarded-For only from the private networks, never "*" (with
    which uvicorn takes the first address, the one a client writes); compose agrees."""
    prefix = project.prefix
    dockerfile = (project.root / "Dockerfile").read_text()
    assert re.search(rf"^\s+{prefix}ENVIRONMENT=production \\$", dockerfile, re.MULTILINE)
    assert project.config[f"{prefix}ENVIRONMENT"] == "production"
    trusted = project.config[f"{prefix}FORWARDED_ALLOW_IPS"]
    networks = [ipaddress.ip_network(entry) for entry in trusted.split(",")]
    assert all(network.is_private for network in networks), trusted
    compose = yaml.safe_load((project.root / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        if "build" in service:  # the app's image: the API, the migration, the worker
            assert service["environment"][f"{prefix}FORWARDED_ALLOW_IPS"] == trusted, name


def test_every_variable_is_a_setting_under_the_prefix(project: Rendered) -> None:
    prefix = project.prefix
    names = [(f"ConfigMap {k}", k) for k in project.config]
    for workload in project.objects("Deployment") + project.objects("Job"):
        for container in containers(workload):
            names += [
                (f"{container['name']} env {e['name']}", e["name"])
                for e in container.get("env", [])
            ]
            for source in container["envFrom"]:
                ref = source.get("configMapRef") or source["secretRef"]
                assert ref["name"] in {
                    f"{project.slug}-config",
                    SECRET_NAME.format(slug=project.slug),
                }
    for where, name in names:
        assert name.startswith(prefix), f"{where}: not under the prefix {prefix}"
        assert name[len(prefix) :].lower() in project.fields, f"{where}: no such setting"


def test_the_secret_is_referenced_never_defined(project: Rendered) -> None:
    secret = SECRET_NAME.format(slug=project.slug)
    assert project.objects("Secret") == []
    for workload in project.objects("Deployment") + project.objects("Job"):
        for container in containers(workload):
            refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
            assert refs == [secret], f"{container['name']} does not read the Secret {secret}"
    config = project.config
    assert f"{project.prefix}SECRET_KEY" not in config
    for key, value in config.items():
        assert not re.search(r"://[^/@\s]*:[^/@\s]*@", str(value)), f"{key} holds a password"
    if project.combo.database != "sqlite":  # the server's URL has its password
        assert f"{project.prefix}DATABASE_URL" not in config
    env = (project.root / ".env").read_text()
    rendered_secret = env.split(f"{project.prefix}SECRET_KEY=")[1].split()[0]
    deploy_doc = (project.root / "docs/deploy.md").read_text()
    for name in project.manifests:
        assert rendered_secret not in (project.root / K8S / name).read_text()
    # docs/deploy.md says how to create it, with every key the manifests leave out.
    assert f"kubectl create secret generic {secret}" in deploy_doc
    assert f"--from-literal={project.prefix}SECRET_KEY=" in deploy_doc
    if project.combo.database != "sqlite":
        assert f"--from-literal={project.prefix}DATABASE_URL=" in deploy_doc


def test_pods_run_locked_down(project: Rendered) -> None:
    dockerfile = (project.root / "Dockerfile").read_text()
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user
    for workload in project.objects("Deployment") + project.objects("Job"):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True
        assert (pod["runAsUser"], pod["runAsGroup"]) == (int(user[1]), int(user[2])), name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        # A Service named like the prefix would inject {PREFIX}PORT=tcp://... otherwise.
        assert spec["enableServiceLinks"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert set(container["resources"][kind]) == {"cpu", "memory"}, where
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"], f"{where}: /tmp not writable"
            # What the app keeps on disk is on the data volume: the SQLite file for every
            # container, uploads for the API's.
            persistent = [p for p, v in mounts.items() if "persistentVolumeClaim" in v]
            for path in disk_paths(project, api=container["name"] == "api"):
                assert any(path.is_relative_to(p) for p in persistent), f"{where}: {path}"


def test_termination_outlasts_the_apps_shutdown(project: Rendered) -> None:
    config, prefix = project.config, project.prefix
    spec = pod_spec(project.api)
    (api,) = spec["containers"]
    sleep = api["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    budget = int(sleep[1]) + float(config[f"{prefix}GRACEFUL_SHUTDOWN_SECONDS"])
    combo = project.combo
    in_process = "background_tasks" in combo.features and not combo.redis_queue
    if in_process:  # in-process jobs finish after requests
        budget += float(config[f"{prefix}JOBS_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > budget

    # WORKERS: one server process per CPU of the limit (one event loop uses one core).
    cores = math.ceil(cpu_cores(api["resources"]["limits"]["cpu"]))
    (workers,) = [e for e in api["env"] if e["name"] == f"{prefix}WORKERS"]
    if in_process:
        assert workers["value"] == "1", "in-process jobs need one server process"
        assert cores == 1
    else:
        field = workers["valueFrom"]["resourceFieldRef"]
        assert (field["containerName"], field["resource"]) == (api["name"], "limits.cpu")


def test_migration_runs_before_the_api(project: Rendered) -> None:
    upgrade = ["alembic", "upgrade", "heads"]
    assert (project.root / "alembic.ini").is_file()
    deploy_doc = (project.root / "docs/deploy.md").read_text()
    if project.combo.database == "sqlite":
        (init,) = pod_spec(project.api)["initContainers"]
        assert init["command"] == upgrade
        assert project.objects("Job") == []
        return
    job = project.one("Job", f"{project.slug}-migrate")
    (container,) = pod_spec(job)["containers"]
    assert container["command"] == upgrade
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 1
    assert pod_spec(job)["restartPolicy"] == "Never"
    assert "initContainers" not in pod_spec(project.api), "one migration, not one per replica"
    assert f"kubectl wait --for=condition=complete job/{project.slug}-migrate" in deploy_doc


def test_the_first_step_applies_all_but_the_new_code(project: Rendered) -> None:
    """docs/deploy.md: `kubectl apply -k deploy/k8s -l SELECTOR` before the migration is waited
    for."""
    deploy_doc = (project.root / "docs/deploy.md").read_text()
    found = re.search(r"kubectl apply -k deploy/k8s -l '([^']+)'", deploy_doc)
    if project.combo.database == "sqlite":  # migrated by the API pod's init container
        assert not found, "SQLite needs one apply, no migration step"
        assert "kubectl apply -k deploy/k8s\n" in deploy_doc
        return
    assert found, "docs/deploy.md's first apply step is missing"
    requirements = [r.split("!=") for r in found.group(1).split(",")]
    assert all(len(r) == 2 for r in requirements), "only key!=value selectors are documented"
    selected = {
        obj["kind"]
        for obj in project.objects()
        if all(obj["metadata"]["labels"].get(key) != value for key, value in requirements)
    }
    assert selected == {"ConfigMap", "Job"} | (
        {"PersistentVolumeClaim"} if project.data_volume else set()
    )


def test_worker_runs_the_queue(project: Rendered) -> None:
    name = f"{project.slug}-worker"
    workers = [d for d in project.objects("Deployment") if d["metadata"]["name"] == name]
    assert len(workers) == (1 if project.combo.redis_queue else 0)
    if not workers:
        return
    spec = pod_spec(workers[0])
    (container,) = spec["containers"]
    command = container["command"]
    assert command[:3] == ["python", "-m", f"{project.combo.package}.features.jobs.worker"]
    assert (project.root / f"src/{project.combo.package}/features/jobs/worker.py").is_file()
    assert command[3:] == []  # one process; JOB_CONCURRENCY jobs at a time
    # On SIGTERM running jobs get the grace period, then are given back before the kill.
    grace = float(project.config[f"{project.prefix}JOBS_SHUTDOWN_GRACE_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] > grace


def manifests_of(root: Path, combo: Combo) -> dict[str, str]:
    """The manifests' text, the combination's own package name (and env prefix) masked."""
    texts = {path.name: path.read_text() for path in sorted((root / K8S).iterdir())}
    return {
        name: text.replace(combo.package, "PKG").replace(combo.package.upper(), "PKG")
        for name, text in texts.items()
    }


# The options the manifests must not depend on, each flipped from two of the answer sets
# above (every one of them, combined with every value of the factors, renders somewhere in
# ``test_combinations``'s cheap checks).
OTHER_OPTIONS = [name for name in FACTORS if name not in MANIFEST_FACTORS]
POSTGRESQL_QUEUE_S3 = "postgresql-uploads+background_tasks-redis-queue-s3"


@pytest.mark.parametrize("option", OTHER_OPTIONS)
@pytest.mark.parametrize(
    "base",
    [c for c in ALL_COMBOS if c.id in ("sqlite-uploads+background_tasks", POSTGRESQL_QUEUE_S3)],
    ids=lambda c: c.id,
)
def test_only_database_jobs_and_uploads_change_the_manifests(
    base: Combo, option: str, renders: Renders
) -> None:
    """Users live in the database the manifests already wire, metrics and the upstream are
    routes of the same pods, and the image's Python is not in them: each of those options
    leaves every manifest byte for byte as it is (so the 27 answer sets above are all)."""
    values = base.factors()
    flipped = [value for value in FACTORS[option] if value != values[option]]
    expected = manifests_of(renders.get(base), base)
    for value in flipped:
        other = Combo.from_factors({**values, option: value})
        assert other in all_combos()
        assert manifests_of(renders.get(other), other) == expected, f"{option}={value} changes them"
