"""Checks of the Kubernetes manifests, the Dockerfile and the compose stack.

The kustomize base and the example overlay are rendered by a small renderer in
this file (no kustomize binary needed) that implements exactly the subset the
manifests use: `resources`, `components`, `namespace`, `images` and `patches`
given by path, as strategic-merge patches without list merging. It refuses
anything else, so a manifest change beyond the subset fails loudly instead of
being rendered wrongly. When `kubectl` is on PATH (it bundles kustomize), the
renderer's output is also compared with `kubectl kustomize`.

Built-in kinds are validated offline with kubernetes-validate (strict schemas)
against the oldest and newest Kubernetes versions we target; CRDs
(ServiceMonitor, PrometheusRule, ScaledObject, TriggerAuthentication) have no
schema there, so their required fields are checked by hand.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
KEDA_COMPONENT = K8S / "components" / "keda"
SECRET_EXAMPLE = BASE / "secret.example.yaml"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
COMPOSE = REPO_ROOT / "deploy" / "compose" / "docker-compose.yml"

APP = "apaas-erp-sync"
METRICS_PORT = 8000
DEFAULT_SHUTDOWN_TIMEOUT_SECONDS = 20
APP_UID = 10001
PARTITIONS_ANNOTATION = "apaas-erp-sync.apaas.io/topic-partitions"

# Oldest and newest Kubernetes minor versions the manifests must be valid for.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())

# Documented ERP_SYNC_* settings; ERP_SYNC_KAFKA_<KEY> passes any librdkafka key through.
KNOWN_SETTINGS = frozenset(
    {
        "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS",
        "ERP_SYNC_TOPIC",
        "ERP_SYNC_GROUP_ID",
        "ERP_SYNC_DLQ_TOPIC",
        "ERP_SYNC_ERP_URL",
        "ERP_SYNC_ERP_TIMEOUT_SECONDS",
        "ERP_SYNC_ERP_RETRY_CODES",
        "ERP_SYNC_ERP_DUPLICATE_CODES",
        "ERP_SYNC_RETRY_BACKOFF_INITIAL_SECONDS",
        "ERP_SYNC_RETRY_BACKOFF_MAX_SECONDS",
        "ERP_SYNC_METRICS_PORT",
        "ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS",
        "ERP_SYNC_MAX_IN_FLIGHT",
        "ERP_SYNC_ERP_MAX_REQUESTS_PER_SECOND",
        "ERP_SYNC_LOG_FORMAT",
        "ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE",
        "ERP_SYNC_ERP_HMAC_SECRET_FILE",
        "ERP_SYNC_ERP_CA_BUNDLE",
    }
)


def _known_settings() -> frozenset[str]:
    """The documented settings, plus every field of the consumer's Settings when importable."""
    try:
        from consumer.settings import Settings
    except Exception:  # the package may not be importable in a deploy-only checkout
        return KNOWN_SETTINGS
    return KNOWN_SETTINGS | {f"ERP_SYNC_{name.upper()}" for name in Settings.model_fields}


def _is_known_setting(name: str) -> bool:
    return name in _known_settings() or name.startswith("ERP_SYNC_KAFKA_")


CLI_SUBCOMMANDS = frozenset(
    {"run", "erp-stub", "produce-sample", "status", "reset-offsets", "replay", "dlq", "check-config"}
)

CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
)
WORKLOAD_KINDS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job"})


# =========================================================== mini kustomize


class UnsupportedKustomization(Exception):
    """The manifests use a kustomize feature this renderer does not implement."""


def _load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _kustomization(directory: Path, kind: str) -> dict[str, Any]:
    data = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    if data.get("kind", "Kustomization") != kind:
        raise UnsupportedKustomization(f"{directory}: expected kind {kind}, got {data.get('kind')}")
    supported = {"apiVersion", "kind", "resources", "components", "namespace", "images", "patches"}
    unknown = set(data) - supported
    if unknown:
        raise UnsupportedKustomization(f"{directory}: fields not supported by the test renderer: {unknown}")
    return data


def _resources(directory: Path, entries: list[str]) -> list[dict[str, Any]]:
    loaded: list[dict[str, Any]] = []
    for entry in entries:
        path = (directory / entry).resolve()
        if path.is_dir():
            loaded += render_kustomization(path)
        else:
            loaded += _load_yaml_documents(path)
    return loaded


def _merge(target: dict[str, Any], patch: dict[str, Any], *, builtin: bool, where: str) -> None:
    """Strategic merge restricted to maps; lists replace, and only in CRDs."""
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedKustomization(f"{where}: patch directive {key} not supported")
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value, builtin=builtin, where=f"{where}.{key}")
        elif isinstance(value, list) and builtin:
            # Built-in kinds merge lists by key (containers by name, ...): not
            # implemented here, so such a patch must not silently differ.
            raise UnsupportedKustomization(f"{where}.{key}: list in a patch of a built-in kind")
        else:
            target[key] = copy.deepcopy(value)


def _apply_patches(directory: Path, patches: list[dict[str, Any]], objects: list[dict[str, Any]]) -> None:
    for entry in patches:
        if set(entry) != {"path"}:
            raise UnsupportedKustomization(f"{directory}: only `patches: [{{path: ...}}]` is supported")
        for patch in _load_yaml_documents(directory / entry["path"]):
            matches = [
                obj
                for obj in objects
                if obj["kind"] == patch["kind"]
                and obj["apiVersion"].split("/")[0] == patch["apiVersion"].split("/")[0]
                and obj["metadata"]["name"] == patch["metadata"]["name"]
            ]
            if len(matches) != 1:
                raise UnsupportedKustomization(
                    f"{entry['path']}: patch matches {len(matches)} objects, expected exactly 1"
                )
            builtin = "." not in patch["apiVersion"].split("/")[0] or patch["apiVersion"].startswith(
                ("apps/", "policy/", "batch/")
            )
            body = {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")}
            _merge(matches[0], body, builtin=builtin, where=entry["path"])


def _split_image(image: str) -> tuple[str, str | None, str | None]:
    name, _, digest = image.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _apply_images(images: list[dict[str, Any]], objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        if obj["kind"] not in WORKLOAD_KINDS:
            continue
        pod = obj["spec"]["template"]["spec"]
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag, digest = _split_image(container["image"])
            for rule in images:
                if rule["name"] != name:
                    continue
                new_name = rule.get("newName", name)
                if "digest" in rule:
                    container["image"] = f"{new_name}@{rule['digest']}"
                elif "newTag" in rule:
                    container["image"] = f"{new_name}:{rule['newTag']}"
                else:
                    suffix = f"@{digest}" if digest else (f":{tag}" if tag else "")
                    container["image"] = new_name + suffix


def _apply_component(directory: Path, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    data = _kustomization(directory, "Component")
    for key in ("namespace", "images"):
        if key in data:
            raise UnsupportedKustomization(f"{directory}: `{key}` in a component is not supported")
    objects = objects + _resources(directory, data.get("resources", []))
    _apply_patches(directory, data.get("patches", []), objects)
    return objects


def render_kustomization(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization directory with the subset of kustomize used here."""
    data = _kustomization(directory, "Kustomization")
    objects = _resources(directory, data.get("resources", []))
    for component in data.get("components", []):
        objects = _apply_component((directory / component).resolve(), objects)
    _apply_patches(directory, data.get("patches", []), objects)
    _apply_images(data.get("images", []), objects)
    if "namespace" in data:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj["metadata"]["namespace"] = data["namespace"]
    return objects


def _by_key(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    keyed = {}
    for obj in objects:
        key = (obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
        assert key not in keyed, f"duplicate object {key}"
        keyed[key] = obj
    return keyed


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected exactly one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render_kustomization(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return render_kustomization(OVERLAY)


@pytest.fixture(scope="module", params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render_kustomization(BASE if request.param == "base" else OVERLAY)


@pytest.fixture(scope="module")
def secret_example() -> dict[str, Any]:
    (secret,) = _load_yaml_documents(SECRET_EXAMPLE)
    return secret


# ------------------------------------------------------------ the renderer


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_renderer_matches_kubectl_kustomize(directory: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the test renderer alone is used")
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=120
    )
    assert result.returncode == 0, result.stderr
    real = _by_key([doc for doc in yaml.safe_load_all(result.stdout) if doc])
    ours = _by_key(render_kustomization(directory))
    assert set(ours) == set(real)
    for key, obj in ours.items():
        assert obj == real[key], f"{key} differs from kubectl kustomize"


def test_renderer_refuses_list_patches_on_builtin_kinds(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [str(BASE)], "patches": [{"path": "p.yaml"}]})
    )
    (tmp_path / "p.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": APP},
                "spec": {"template": {"spec": {"containers": [{"name": "erp-sync", "args": ["x"]}]}}},
            }
        )
    )
    with pytest.raises(UnsupportedKustomization):
        render_kustomization(tmp_path)


def test_secret_example_is_not_a_resource(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not [obj for obj in base + overlay if obj["kind"] == "Secret"]


# ------------------------------------------------------------- validation


def _check_duration(value: Any, where: str) -> None:
    assert isinstance(value, str) and re.fullmatch(r"(\d+(ms|s|m|h|d|w|y))+", value), (
        f"{where}: not a Prometheus duration: {value!r}"
    )


def _check_labels_map(value: Any, where: str) -> None:
    assert isinstance(value, dict), f"{where}: must be a map"
    for key, val in value.items():
        assert isinstance(key, str) and isinstance(val, str), f"{where}: {key!r}: {val!r} must be strings"


def _check_metadata(obj: dict[str, Any]) -> None:
    meta = obj.get("metadata")
    assert isinstance(meta, dict) and isinstance(meta.get("name"), str) and meta["name"], "metadata.name"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]), f"bad name {meta['name']!r}"
    for field in ("labels", "annotations"):
        if field in meta:
            _check_labels_map(meta[field], f"metadata.{field}")


def _check_service_monitor(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    assert set(spec) <= {
        "selector",
        "endpoints",
        "namespaceSelector",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
    }
    _check_labels_map(spec["selector"]["matchLabels"], "spec.selector.matchLabels")
    assert spec["endpoints"], "spec.endpoints must not be empty"
    allowed = {
        "port",
        "targetPort",
        "path",
        "interval",
        "scrapeTimeout",
        "scheme",
        "honorLabels",
        "relabelings",
    }
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= allowed, f"unknown endpoint fields {set(endpoint) - allowed}"
        assert isinstance(endpoint.get("port"), str), "endpoints[].port must name a Service port"
        assert endpoint.get("path", "/metrics").startswith("/")
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint:
                _check_duration(endpoint[field], f"endpoints[].{field}")


def _check_prometheus_rule(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(obj["spec"]) == {"groups"}
    assert obj["spec"]["groups"], "spec.groups must not be empty"
    for group in obj["spec"]["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in rule) != ("record" in rule), "a rule is either an alert or a record"
            assert isinstance(rule["expr"], str) and rule["expr"].strip()
            if "for" in rule:
                _check_duration(rule["for"], f"{rule.get('alert')}.for")
            for field in ("labels", "annotations"):
                if field in rule:
                    _check_labels_map(rule[field], f"{rule.get('alert')}.{field}")


def _check_scaled_object(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    spec = obj["spec"]
    allowed = {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "cooldownPeriod",
        "idleReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    }
    assert set(spec) <= allowed, f"unknown ScaledObject fields {set(spec) - allowed}"
    ref = spec["scaleTargetRef"]
    assert set(ref) <= {"apiVersion", "kind", "name", "envSourceContainerName"}
    assert isinstance(ref["name"], str)
    for field in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        if field in spec:
            assert isinstance(spec[field], int) and spec[field] >= 0, f"spec.{field}"
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["triggers"], "spec.triggers must not be empty"
    for trigger in spec["triggers"]:
        assert set(trigger) <= {"type", "metadata", "authenticationRef", "name", "metricType"}
        assert isinstance(trigger["type"], str)
        # KEDA only accepts string metadata values ("false", "200", not false, 200).
        _check_labels_map(trigger["metadata"], f"trigger {trigger['type']} metadata")
        if "authenticationRef" in trigger:
            assert isinstance(trigger["authenticationRef"]["name"], str)
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        # Validate KEDA's HPA behavior with the real autoscaling/v2 schema.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "behavior-check"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ref["name"]},
                "maxReplicas": spec["maxReplicaCount"],
                "behavior": behavior,
            },
        }
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(hpa, version, strict=True)


def _check_trigger_authentication(obj: dict[str, Any]) -> None:
    assert obj["apiVersion"] == "keda.sh/v1alpha1"
    refs = obj["spec"]["secretTargetRef"]
    assert refs
    for ref in refs:
        assert set(ref) == {"parameter", "name", "key"}
        assert all(isinstance(v, str) and v for v in ref.values())


CRD_CHECKS: dict[str, Callable[[dict[str, Any]], None]] = {
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
    "ScaledObject": _check_scaled_object,
    "TriggerAuthentication": _check_trigger_authentication,
}


def _all_manifests() -> list[tuple[str, dict[str, Any]]]:
    manifests = []
    for label, directory in (("base", BASE), ("overlay", OVERLAY)):
        for obj in render_kustomization(directory):
            manifests.append((f"{label}:{obj['kind']}/{obj['metadata']['name']}", obj))
    (secret,) = _load_yaml_documents(SECRET_EXAMPLE)
    manifests.append(("secret.example.yaml", secret))
    return manifests


@pytest.mark.parametrize(("where", "obj"), _all_manifests(), ids=[m[0] for m in _all_manifests()])
def test_manifest_is_valid(where: str, obj: dict[str, Any]) -> None:
    _check_metadata(obj)
    check = CRD_CHECKS.get(obj["kind"])
    if check is not None:
        check(obj)
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where} invalid for Kubernetes {version}: {error.message} at {list(error.path)}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema for {obj['apiVersion']} {obj['kind']} and no hand check")


def test_validation_catches_mistakes() -> None:
    """The strict schema rejects a misspelt field and a non-string ConfigMap value."""
    deployment = copy.deepcopy(_one(render_kustomization(BASE), "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 40
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    configmap = copy.deepcopy(_one(render_kustomization(BASE), "ConfigMap"))
    configmap["data"]["ERP_SYNC_MAX_IN_FLIGHT"] = 32
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(configmap, K8S_VERSIONS[-1], strict=True)
    scaled = copy.deepcopy(_one(render_kustomization(OVERLAY), "ScaledObject"))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 200
    with pytest.raises(AssertionError):
        _check_scaled_object(scaled)


# ----------------------------------------------------- the Deployment itself


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _config(objects: list[dict[str, Any]]) -> dict[str, str]:
    return _one(objects, "ConfigMap")["data"]


def test_probes(rendered: list[dict[str, Any]]) -> None:
    container = _container(rendered)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert _config(rendered)["ERP_SYNC_METRICS_PORT"] == str(METRICS_PORT)
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert http["port"] in ("metrics", METRICS_PORT), probe


def test_grace_period_exceeds_shutdown_timeout(rendered: list[dict[str, Any]]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    shutdown = float(
        _config(rendered).get("ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS", DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)
    )
    assert pod["terminationGracePeriodSeconds"] > shutdown
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_security_context(rendered: list[dict[str, Any]]) -> None:
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    container = _container(rendered)
    pod_sc, sc = pod["securityContext"], container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser")) == APP_UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc.get("seccompProfile", pod_sc.get("seccompProfile")) == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "/tmp must be an emptyDir (read-only root filesystem)"


def test_resources(rendered: list[dict[str, Any]]) -> None:
    resources = _container(rendered)["resources"]
    assert resources["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert resources["limits"] == {"cpu": "1", "memory": "512Mi"}


def test_configuration_and_secrets(rendered: list[dict[str, Any]], secret_example: dict[str, Any]) -> None:
    container = _container(rendered)
    pod = _one(rendered, "Deployment")["spec"]["template"]["spec"]
    configmap = _one(rendered, "ConfigMap")
    assert container["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    for key in configmap["data"]:
        assert _is_known_setting(key), f"unknown setting {key}"
    assert "ERP_SYNC_ERP_URL" in configmap["data"], "ERP_SYNC_ERP_URL is required"
    for key in (
        "ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE",
        "ERP_SYNC_ERP_HMAC_SECRET_FILE",
        "ERP_SYNC_KAFKA_SASL_PASSWORD",
    ):
        assert key not in configmap["data"], f"{key} belongs to the Secret, not the ConfigMap"

    secret_keys = set(secret_example["stringData"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_mounts = {
        m["mountPath"]: volumes[m["name"]]["secret"]
        for m in container["volumeMounts"]
        if "secret" in volumes[m["name"]]
    }
    assert secret_mounts, "the Secret must be mounted as files"
    for mount_path, source in secret_mounts.items():
        assert source["secretName"] == secret_example["metadata"]["name"]
        assert source["defaultMode"] & 0o007 == 0, "secret files must not be world-readable"
        assert next(m for m in container["volumeMounts"] if m["mountPath"] == mount_path)["readOnly"] is True
    env = {e["name"]: e for e in container["env"]}
    file_vars = [name for name in env if name.endswith("_FILE")]
    assert set(file_vars) == {"ERP_SYNC_ERP_AUTH_HEADER_VALUE_FILE", "ERP_SYNC_ERP_HMAC_SECRET_FILE"}
    for name in file_vars:
        path = Path(env[name]["value"])
        assert str(path.parent) in secret_mounts, f"{name} must point into the mounted Secret"
        assert path.name in secret_keys, f"{name}: key {path.name} missing from secret.example.yaml"
    for name, item in env.items():
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret_example["metadata"]["name"], name
            assert ref["key"] in secret_keys, f"{name}: key {ref['key']} missing from secret.example.yaml"
        assert _is_known_setting(name), f"unknown setting {name}"


def test_labels_and_selectors_are_consistent(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    service = _one(rendered, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    monitor = _one(rendered, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    container_ports = {p["name"] for p in _container(rendered)["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
    assert service_ports["metrics"]["port"] == METRICS_PORT
    assert service_ports["metrics"]["targetPort"] in container_ports
    for obj in rendered:
        assert (
            obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == APP
            or obj["kind"] == "Namespace"
        )


def test_prometheus_job_label_matches_the_alerts(rendered: list[dict[str, Any]]) -> None:
    """The ServiceMonitor's job label is the Service name; the alerts select it."""
    jobs = set(re.findall(r'job="([^"]+)"', ALERTS.read_text(encoding="utf-8")))
    assert jobs == {APP}
    assert _one(rendered, "Service")["metadata"]["name"] == APP
    assert "jobLabel" not in _one(rendered, "ServiceMonitor")["spec"]


def test_prometheus_rule_carries_the_alerts(rendered: list[dict[str, Any]]) -> None:
    rule = _one(rendered, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]


# ------------------------------------------------------------ base/overlay


def test_base_runs_one_replica_without_keda(base: list[dict[str, Any]]) -> None:
    assert _one(base, "Deployment")["spec"]["replicas"] == 1
    assert not [obj for obj in base if obj["apiVersion"].startswith("keda.sh/")]
    assert all("namespace" not in obj["metadata"] for obj in base)


def test_overlay_settings(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    assert _one(overlay, "Namespace")["metadata"]["name"] == namespace
    for obj in overlay:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"]["namespace"] == namespace, obj["kind"]
    url = _config(overlay)["ERP_SYNC_ERP_URL"]
    assert url.startswith("https://") and url != _config(base)["ERP_SYNC_ERP_URL"]
    assert _one(overlay, "Deployment")["spec"]["replicas"] == 2
    _name, tag, digest = _split_image(_container(overlay)["image"])
    assert digest or (tag and tag != "latest"), "the overlay must pin the image"


def test_keda_scaled_object(overlay: list[dict[str, Any]], secret_example: dict[str, Any]) -> None:
    scaled = _one(overlay, "ScaledObject")
    deployment = _one(overlay, "Deployment")
    spec = scaled["spec"]
    ref = spec["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert ref["envSourceContainerName"] == _container(overlay)["name"]
    partitions = int(scaled["metadata"]["annotations"][PARTITIONS_ANNOTATION])
    assert spec["minReplicaCount"] == 1
    assert 1 <= spec["maxReplicaCount"] <= partitions, "more replicas than partitions would sit idle"
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    config = _config(overlay)
    for param, setting in (
        ("bootstrapServersFromEnv", "ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS"),
        ("topicFromEnv", "ERP_SYNC_TOPIC"),
        ("consumerGroupFromEnv", "ERP_SYNC_GROUP_ID"),
    ):
        assert metadata[param] == setting and setting in config, param
    assert metadata["allowIdleConsumers"] == "false"
    if config.get("ERP_SYNC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").startswith("SASL"):
        auth_name = trigger["authenticationRef"]["name"]
        auth = next(
            o for o in overlay if o["kind"] == "TriggerAuthentication" and o["metadata"]["name"] == auth_name
        )
        for item in auth["spec"]["secretTargetRef"]:
            assert item["name"] == secret_example["metadata"]["name"]
            assert item["key"] in secret_example["stringData"]
        assert {i["parameter"] for i in auth["spec"]["secretTargetRef"]} == {"username", "password"}
        mechanism = (
            config["ERP_SYNC_KAFKA_SASL_MECHANISM"]
            .lower()
            .replace("-", "_")
            .replace("scram_sha_", "scram_sha")
        )
        assert metadata["sasl"] == mechanism
        assert metadata["tls"] == (
            "enable" if config["ERP_SYNC_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" else "disable"
        )


def test_keda_component_defaults() -> None:
    (scaled,) = _load_yaml_documents(KEDA_COMPONENT / "scaledobject.yaml")
    assert scaled["spec"]["minReplicaCount"] == 1
    assert scaled["spec"]["maxReplicaCount"] == 6
    assert scaled["metadata"]["annotations"][PARTITIONS_ANNOTATION] == "6"


# ================================================================ Dockerfile


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _dockerfile_stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """``{stage name: (FROM image, instructions after FROM)}`` in file order."""
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in _dockerfile_instructions():
        if keyword == "FROM":
            image, _, name = rest.partition(" AS ")
            assert name, f"every stage is named: FROM {rest}"
            current = []
            stages[name.strip()] = (image.strip(), current)
        elif current is not None:
            current.append((keyword, rest))
    return stages


def test_dockerfile() -> None:
    instructions = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for k, rest in instructions if k == "ARG" and "=" in rest)
    stages = _dockerfile_stages()
    assert list(stages) == ["builder", "runtime", "devstack", "production"], "production is the default (last)"
    for name, (image, _) in stages.items():
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert resolved == "python:3.11-slim" or resolved in stages, f"{name}: FROM {image}"
    assert stages["devstack"][0] == stages["production"][0] == "runtime"

    def text(stage: str, keyword: str) -> str:
        return " ".join(rest for k, rest in stages[stage][1] if k == keyword)

    # builder: everything from the lock, hash-checked; the project built by the locked build tools
    builder_runs = text("builder", "RUN")
    assert "--require-hashes" in builder_runs and "requirements/build.txt" in builder_runs
    assert "pip wheel --require-hashes --no-deps" in builder_runs and "requirements/runtime.txt" in builder_runs
    assert "--no-build-isolation" in builder_runs and "--no-index" in builder_runs
    assert "consumer/devstack" in builder_runs, "the production copy of the venv leaves consumer/devstack out"
    # the images: no compiler installed, no pip run; the venv copied from the builder
    for stage in ("runtime", "devstack", "production"):
        assert "apt-get" not in text(stage, "RUN") and "pip " not in text(stage, "RUN"), stage
    assert "--from=builder /opt/erp-sync /opt/erp-sync" in text("devstack", "COPY")
    assert "--from=builder /opt/erp-sync-production /opt/erp-sync" in text("production", "COPY")
    for stage in ("devstack", "production"):
        final = stages[stage][1]
        assert ("USER", f"{APP_UID}:{APP_UID}") in final, stage
        assert ("ENTRYPOINT", '["erp-sync"]') in final, stage
        assert ("CMD", '["run"]') in final, stage
        assert str(METRICS_PORT) in text(stage, "EXPOSE").split(), stage
    assert "HEALTHCHECK" not in [k for k, _ in instructions], "Kubernetes probes replace HEALTHCHECK"
    env = text("runtime", "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env


def test_dockerignore() -> None:
    patterns = {
        line.strip().lstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (
        ".venv",
        ".git",
        "**/__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "data",
    ):
        assert required in patterns, f".dockerignore must exclude {required}"
    for needed in ("README.md", "pyproject.toml", "consumer", "schemas", "requirements", "uv.lock"):
        assert needed not in patterns, f"{needed} is needed by the image build"


# =================================================================== compose


def test_compose_stack() -> None:
    compose = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = compose["services"]
    assert set(services) == {
        "kafka",
        "topic-init",
        "erp-stub",
        "producer",
        "consumer",
        "prometheus",
        "grafana",
    }
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft mode"
    for name in ("erp-stub", "producer", "consumer"):
        service = services[name]
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert (context / service["build"]["dockerfile"]) == DOCKERFILE
        assert service["build"]["target"] == "devstack", f"{name}: the stub and producer are not in production"
        assert service["command"][0] in CLI_SUBCOMMANDS, name
        assert service["user"] == f"{APP_UID}:{APP_UID}" and service["read_only"] is True
        for key in service["environment"]:
            assert _is_known_setting(key), f"{name}: {key}"
    # reachable from the other containers (the stub listens on 127.0.0.1 unless told otherwise)
    assert services["erp-stub"]["command"] == ["erp-stub", "--host", "0.0.0.0", "--port", "8080"]
    assert services["producer"]["command"][:2] == ["produce-sample", "--count"]
    consumer = services["consumer"]
    assert consumer["command"] == ["run"]
    assert consumer["environment"]["ERP_SYNC_ERP_URL"].startswith("http://erp-stub:8080")
    assert int(consumer["stop_grace_period"].rstrip("s")) > DEFAULT_SHUTDOWN_TIMEOUT_SECONDS
    assert consumer["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            host_path = volume.split(":", 1)[0]
            assert (COMPOSE.parent / host_path).exists(), f"{name}: {host_path} does not exist"
    prometheus_mounts = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= prometheus_mounts
