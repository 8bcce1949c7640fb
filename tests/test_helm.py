"""The Helm chart (deploy/helm/mairust), rendered and linted with Helm's own engine.

No Kubernetes cluster runs in these tests: `helm-python-sdk` loads Helm's Go SDK as a shared
library and renders the chart offline (`lookup` returns nothing, as on a first install), and
every rendered object is checked against the Kubernetes OpenAPI schemas shipped by
`kubernetes-validate`. Then the tests check that the values land where they should.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

chart = pytest.importorskip(
    "helm_python.chart",
    reason="helm-python-sdk is not installed (pip install -r tests/requirements.txt)",
)

import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402  (a dependency of kubernetes-validate)
from conftest import BIN, deep_merge  # noqa: E402
from helm_python.errors import HelmRenderError, HelmValuesError  # noqa: E402

CHART_DIR = Path(__file__).resolve().parent.parent / "deploy" / "helm" / "mairust"
SPEC_VALUES_FILE = CHART_DIR / "ci" / "spec-values.yaml"
KUBE_VERSION = "1.30"
RELEASE = "mail"
NAMESPACE = "mairust"
FULLNAME = f"{RELEASE}-mairust"
HEADLESS = f"{FULLNAME}-core-headless"

# Kinds that kubernetes-validate has no schema for (custom resources); checked field by field.
CUSTOM_KINDS = {"ServiceMonitor"}


def spec_values() -> dict[str, Any]:
    return yaml.safe_load(SPEC_VALUES_FILE.read_text())


# NetworkPolicy peers as an operator would give them: the ingress controller's namespace,
# Prometheus's pods in the monitoring namespace, and another workload that calls the API.
INGRESS_CONTROLLER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
}
PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
API_CLIENT = {"podSelector": {"matchLabels": {"app": "billing"}}}
NETWORK_POLICY = {
    "enabled": True,
    "webFrom": [INGRESS_CONTROLLER],
    "apiFrom": [API_CLIENT],
    "metricsFrom": [PROMETHEUS],
}

# Every option that changes what is rendered, switched away from its default at once.
ALL_OPTIONS = {
    "hostname": "mx.example.com",
    "config": {"delivery": {"relay_host": "smarthost.example.com:587"}},
    "global": {"imageRegistry": "registry.example.com/", "imagePullSecrets": [{"name": "pull"}]},
    "core": {
        "image": {"tag": "9.9.9"},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
        "persistence": {"enabled": False},
        "extraEnv": [{"name": "MAIRUST_SMTP__MAX_RECIPIENTS", "value": "50"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
    },
    "web": {"containerPorts": {"http": 8081}},
    "postgresql": {"external": {"options": "sslmode=require", "port": 6432}},
    "storage": {"backend": "fs", "fs": {"existingClaim": "mairust-mail"}},
    "cluster": {"existingSecret": "my-cluster-secret"},
    "security": {"masterKey": {"existingSecret": "mairust-master-key"}},
    "admin": {"existingSecret": "mairust-admin"},
    "ingress": {"enabled": True, "tls": [{"secretName": "tls", "hosts": ["mail.example.com"]}]},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
    "networkPolicy": NETWORK_POLICY,
}


@pytest.fixture(scope="module")
def helm_chart():
    loaded = chart.Chart.load(CHART_DIR)
    yield loaded
    loaded.close()


def render(helm_chart, values: dict[str, Any] | None = None) -> dict[str, str]:
    return helm_chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


def objects(manifests: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


class Rendered:
    """The objects of one render, looked up by kind and name."""

    def __init__(self, manifests: dict[str, str]):
        self.manifests = manifests
        self.objects = objects(manifests)
        self.by_key = {(o["kind"], o["metadata"]["name"]): o for o in self.objects}
        assert len(self.by_key) == len(self.objects), "two objects share a kind and name"

    def get(self, kind: str, name: str) -> dict[str, Any]:
        assert (kind, name) in self.by_key, f"no {kind} {name}; have {sorted(self.by_key)}"
        return self.by_key[(kind, name)]

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    @property
    def notes(self) -> str:
        return next(v for k, v in self.manifests.items() if k.endswith("NOTES.txt"))


@pytest.fixture(scope="module")
def defaults(helm_chart) -> Rendered:
    return Rendered(render(helm_chart))


@pytest.fixture(scope="module")
def spec(helm_chart) -> Rendered:
    return Rendered(render(helm_chart, spec_values()))


@pytest.fixture(scope="module")
def everything(helm_chart) -> Rendered:
    return Rendered(render(helm_chart, deep_merge(spec_values(), ALL_OPTIONS)))


def workloads(r: Rendered) -> dict[str, dict[str, Any]]:
    return {
        "core": r.get("StatefulSet", f"{FULLNAME}-core"),
        "api": r.get("Deployment", f"{FULLNAME}-api"),
        "web": r.get("Deployment", f"{FULLNAME}-web"),
    }


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (c,) = workload["spec"]["template"]["spec"]["containers"]
    return c


def env_of(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    env = container(workload)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e for e in env}


def secret_ref(env: dict[str, dict[str, Any]], name: str) -> tuple[str, str]:
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def container_port(workload: dict[str, Any], name: str) -> dict[str, Any]:
    ports = {p["name"]: p for p in container(workload)["ports"]}
    assert name in ports, f"no container port {name}: {sorted(ports)}"
    return ports[name]


# ------------------------------------------------------------------------------ lint


def assert_lint_clean(report: dict[str, Any]) -> None:
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Severity 1 is informational ("icon is recommended"); warnings (2) and errors (3) fail.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_lint_strict_clean_with_defaults():
    assert_lint_clean(chart.lint(CHART_DIR, strict=True, namespace=NAMESPACE))


def test_lint_strict_clean_with_spec_values():
    assert_lint_clean(chart.lint(CHART_DIR, values=spec_values(), strict=True, namespace=NAMESPACE))


def test_lint_strict_clean_with_every_option():
    values = deep_merge(spec_values(), ALL_OPTIONS)
    assert_lint_clean(chart.lint(CHART_DIR, values=values, strict=True, namespace=NAMESPACE))


def test_lint_reports_a_bad_value():
    report = chart.lint(CHART_DIR, values={"core": {"replicas": "three"}}, strict=True)
    assert any("/core/replicas" in e for e in report["errors"]), report


# --------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("variant", ["defaults", "spec", "everything"])
def test_every_manifest_validates_against_kubernetes_schemas(variant, request):
    rendered: Rendered = request.getfixturevalue(variant)
    checked = 0
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 12, f"only {checked} objects validated"


def test_validator_rejects_a_broken_manifest(spec):
    # Proves the schema check above can fail: an unknown field and a wrong type.
    core = copy.deepcopy(spec.get("StatefulSet", f"{FULLNAME}-core"))
    core["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(core, KUBE_VERSION, strict=True)
    core = copy.deepcopy(spec.get("StatefulSet", f"{FULLNAME}-core"))
    core["spec"]["replicas"] = "2"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(core, KUBE_VERSION, strict=True)


def test_only_custom_resources_lack_a_schema(everything):
    for obj in everything.objects:
        if obj["kind"] in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


# ------------------------------------------------------------ the spec's values land


def test_spec_replicas_and_resources(spec):
    w = workloads(spec)
    assert w["core"]["spec"]["replicas"] == 2
    assert w["api"]["spec"]["replicas"] == 3
    assert w["web"]["spec"]["replicas"] == 2
    assert container(w["core"])["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"},
        "limits": {"cpu": "2000m", "memory": "2Gi"},
    }
    assert container(w["api"])["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}


def test_spec_storage_class_on_core_volume_claims(spec, defaults):
    (claim,) = spec.get("StatefulSet", f"{FULLNAME}-core")["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["storageClassName"] == "standard"
    (claim,) = defaults.get("StatefulSet", f"{FULLNAME}-core")["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"], "empty storageClass must mean the default"


def test_spec_database_url_and_password_secret(spec):
    for name, w in workloads(spec).items():
        if name == "web":
            continue
        env = env_of(w)
        assert secret_ref(env, "PGPASSWORD") == ("mairust-db-credentials", "password")
        assert env["DATABASE_URL"]["value"] == (
            "postgres://mairust:$(PGPASSWORD)@postgres.example.com:5432/mairust"
        )
        # Kubernetes expands $(VAR) only from variables defined earlier in the list.
        names = list(env)
        assert names.index("PGPASSWORD") < names.index("DATABASE_URL")


def test_spec_s3_settings_and_secret(spec):
    for name in ("core", "api"):
        env = env_of(workloads(spec)[name])
        assert env["STORAGE_BACKEND"]["value"] == "s3"
        assert env["S3_BUCKET"]["value"] == "mairust-mails"
        assert env["S3_REGION"]["value"] == "ap-northeast-1"
        assert "S3_ENDPOINT" not in env
        assert secret_ref(env, "S3_ACCESS_KEY") == ("mairust-s3-credentials", "access-key")
        assert secret_ref(env, "S3_SECRET_KEY") == ("mairust-s3-credentials", "secret-key")


def test_spec_ingress_host_class_and_backend(spec, defaults):
    assert defaults.kinds("Ingress") == []
    (ing,) = spec.kinds("Ingress")
    assert ing["spec"]["ingressClassName"] == "nginx"
    (rule,) = ing["spec"]["rules"]
    assert rule["host"] == "mail.example.com"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    backend = path["backend"]["service"]
    svc = spec.get("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert svc["spec"]["selector"]["app.kubernetes.io/component"] == "web"


@pytest.mark.parametrize("variant", ["defaults", "spec"])
def test_probes_as_in_the_spec(variant, request):
    rendered: Rendered = request.getfixturevalue(variant)
    for name, w in workloads(rendered).items():
        c = container(w)
        live, ready = c["livenessProbe"], c["readinessProbe"]
        assert live["httpGet"]["path"] == "/health/live"
        assert ready["httpGet"]["path"] == "/health/ready"
        assert (live["initialDelaySeconds"], live["periodSeconds"]) == (10, 10)
        assert (ready["initialDelaySeconds"], ready["periodSeconds"]) == (5, 5)
        for probe in (live, ready):
            port = container_port(w, probe["httpGet"]["port"])
            if name != "web":
                assert port["containerPort"] == 8080


@pytest.mark.parametrize("variant", ["defaults", "spec", "everything"])
def test_security_context(variant, request):
    rendered: Rendered = request.getfixturevalue(variant)
    for name, w in workloads(rendered).items():
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        sc = container(w)["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert "add" not in sc["capabilities"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        # The root filesystem is read-only: every path the process writes is a volume.
        mounts = {m["mountPath"]: m["name"] for m in container(w)["volumeMounts"]}
        assert "/tmp" in mounts and "/var/lib/mairust" in mounts, (name, mounts)
        volumes = {v["name"] for v in pod["volumes"]}
        claims = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates", [])}
        assert set(mounts.values()) <= volumes | claims, (name, mounts, volumes, claims)


def test_web_binds_its_low_port_without_capabilities(spec, everything):
    pod = workloads(spec)["web"]["spec"]["template"]["spec"]
    assert container_port(workloads(spec)["web"], "http")["containerPort"] == 80
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "80"} in pod["securityContext"][
        "sysctls"
    ]
    pod = workloads(everything)["web"]["spec"]["template"]["spec"]
    assert "sysctls" not in pod["securityContext"]
    env = env_of(workloads(spec)["web"])
    assert env["API_URL"]["value"] == f"http://{FULLNAME}-api.{NAMESPACE}.svc.cluster.local:8080"
    assert env["MAIRUST_SERVER__ROLES"]["value"] == "web"


# ------------------------------------------------------------------------ the cluster


def test_core_is_a_statefulset_behind_a_headless_service(spec):
    core = spec.get("StatefulSet", f"{FULLNAME}-core")
    headless = spec.get("Service", HEADLESS)
    assert core["spec"]["serviceName"] == HEADLESS
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    ports = {p["name"]: p for p in headless["spec"]["ports"]}
    assert (ports["cluster"]["port"], ports["cluster"]["protocol"]) == (7946, "UDP")
    pod_labels = core["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= pod_labels.items()
    assert container_port(core, "cluster") == {
        "name": "cluster",
        "containerPort": 7946,
        "protocol": "UDP",
    }


@pytest.mark.parametrize("component", ["core", "api"])
def test_cluster_environment(spec, component):
    w = workloads(spec)[component]
    env = env_of(w)
    assert env["MAIRUST_CLUSTER__ENABLED"]["value"] == "true"
    assert env["MAIRUST_CLUSTER__NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["MAIRUST_CLUSTER__ADVERTISE"]["value"] == "$(POD_IP):7946"
    names = list(env)
    assert names.index("POD_IP") < names.index("MAIRUST_CLUSTER__ADVERTISE")
    assert env["MAIRUST_CLUSTER__BIND"]["value"] == "0.0.0.0:7946"
    assert env["MAIRUST_CLUSTER__SEED_DNS"]["value"] == (
        f"{HEADLESS}.{NAMESPACE}.svc.cluster.local:7946"
    )
    assert secret_ref(env, "MAIRUST_CLUSTER__SECRET") == (f"{FULLNAME}-cluster", "secret")
    assert container_port(w, "cluster")["protocol"] == "UDP"


def test_cluster_secret_is_generated_once_and_kept(spec, helm_chart):
    secret = spec.get("Secret", f"{FULLNAME}-cluster")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    value = base64.b64decode(secret["data"]["secret"]).decode()
    assert len(value) >= 16 and value.isalnum()
    # Offline, `lookup` finds nothing: each render is a first install with a fresh secret.
    again = Rendered(render(helm_chart, spec_values())).get("Secret", f"{FULLNAME}-cluster")
    assert again["data"]["secret"] != secret["data"]["secret"]


def test_cluster_secret_from_an_existing_secret(everything):
    assert everything.kinds("Secret") == [], "no Secret is generated when one is given"
    for name in ("core", "api"):
        env = env_of(workloads(everything)[name])
        assert secret_ref(env, "MAIRUST_CLUSTER__SECRET") == ("my-cluster-secret", "secret")


def test_roles_ports_and_lease_ttl(spec):
    w = workloads(spec)
    assert env_of(w["core"])["MAIRUST_SERVER__ROLES"]["value"] == "smtp,queue,imap"
    assert env_of(w["api"])["MAIRUST_SERVER__ROLES"]["value"] == "api"
    core_env = env_of(w["core"])
    assert core_env["MAIRUST_QUEUE__LEASE_TTL"]["value"] == "4s"
    assert core_env["MAIRUST_SERVER__SMTP_PORT"]["value"] == "2525"
    assert core_env["MAIRUST_SERVER__SUBMISSION_PORT"]["value"] == "2587"
    assert core_env["MAIRUST_SERVER__API_PORT"]["value"] == "8080"
    assert container_port(w["core"], "smtp")["containerPort"] == 2525
    assert container_port(w["core"], "submission")["containerPort"] == 2587
    for name, port in [("imap", 2143), ("imaps", 2993), ("pop3", 2110), ("pop3s", 2995)]:
        assert core_env[f"MAIRUST_SERVER__{name.upper()}_PORT"]["value"] == str(port)
        assert container_port(w["core"], name)["containerPort"] == port
    for name in ("core", "api", "web"):
        assert w[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 45


def test_container_ports_are_values(helm_chart):
    values = deep_merge(spec_values(), {"core": {"containerPorts": {"smtp": 10025}}})
    core = Rendered(render(helm_chart, values)).get("StatefulSet", f"{FULLNAME}-core")
    assert env_of(core)["MAIRUST_SERVER__SMTP_PORT"]["value"] == "10025"
    assert container_port(core, "smtp")["containerPort"] == 10025


def test_smtp_and_api_services(spec, everything):
    smtp = spec.get("Service", f"{FULLNAME}-smtp")
    assert smtp["spec"]["type"] == "ClusterIP"
    ports = {p["name"]: p for p in smtp["spec"]["ports"]}
    assert (ports["smtp"]["port"], ports["smtp"]["targetPort"]) == (25, "smtp")
    assert (ports["submission"]["port"], ports["submission"]["targetPort"]) == (587, "submission")
    for name, port in [("imap", 143), ("imaps", 993), ("pop3", 110), ("pop3s", 995)]:
        assert (ports[name]["port"], ports[name]["targetPort"]) == (port, name)
    api = spec.get("Service", f"{FULLNAME}-api")
    assert [(p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [(8080, "http")]
    lb = everything.get("Service", f"{FULLNAME}-smtp")
    assert lb["spec"]["type"] == "LoadBalancer"
    assert lb["spec"]["externalTrafficPolicy"] == "Local"


@pytest.mark.parametrize("variant", ["defaults", "spec", "everything"])
def test_services_select_pods_and_name_their_ports(variant, request):
    rendered: Rendered = request.getfixturevalue(variant)
    pods = [w["spec"]["template"] for w in workloads(rendered).values()]
    for svc in rendered.kinds("Service"):
        selected = [
            p for p in pods if svc["spec"]["selector"].items() <= p["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {svc['metadata']['name']} selects {len(selected)}"
        (c,) = selected[0]["spec"]["containers"]
        names = {p["name"]: p["protocol"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert names.get(port["targetPort"]) == port["protocol"], (svc["metadata"]["name"], port)


def test_pod_disruption_budgets(spec):
    pdbs = {p["metadata"]["name"]: p for p in spec.kinds("PodDisruptionBudget")}
    for name, w in workloads(spec).items():
        pdb = pdbs[f"{FULLNAME}-{name}"]
        assert pdb["spec"]["maxUnavailable"] == 1
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert w["spec"]["selector"]["matchLabels"] == pdb["spec"]["selector"]["matchLabels"]


def test_service_monitor_only_when_enabled(defaults, spec, everything):
    assert defaults.kinds("ServiceMonitor") == []
    assert spec.kinds("ServiceMonitor") == []
    (sm,) = everything.kinds("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    scraped = {
        s["metadata"]["name"]
        for s in everything.kinds("Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    }
    assert scraped == {f"{FULLNAME}-api", HEADLESS}


# ------------------------------------------------- the engine accepts what is rendered

FIELDS = {"metadata.name": f"{FULLNAME}-core-0", "status.podIP": "10.1.2.3"}


def resolve_env(env: list[dict[str, Any]]) -> dict[str, str]:
    """The environment a kubelet would give the container: fieldRefs and secretKeyRefs filled
    with stand-ins, `$(VAR)` expanded from the variables defined before it."""
    out: dict[str, str] = {}
    for e in env:
        if "value" in e:
            value = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: out.get(m[1], m[0]), e["value"])
        elif "fieldRef" in e["valueFrom"]:
            value = FIELDS[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            value = f"{ref['name']}-{ref['key']}-0123456789abcdef".replace(".", "-")
            if ref["key"] == "master-key":
                value = base64.b64encode(bytes(range(32))).decode()
            if ref["key"] == "email":
                value = "admin@example.com"
        out[e["name"]] = value
    return out


@pytest.mark.parametrize("variant", ["spec", "everything"])
@pytest.mark.parametrize("component", ["core", "api"])
def test_engine_accepts_the_rendered_configuration(variant, component, request, tmp_path):
    rendered: Rendered = request.getfixturevalue(variant)
    w = workloads(rendered)[component]
    env = resolve_env(container(w)["env"])
    assert not any("$(" in v for v in env.values()), env
    config = tmp_path / "config.yaml"
    config.write_text(rendered.get("ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
    proc = subprocess.run(
        [BIN, "--config", str(config), "check-config"],
        env={"PATH": os.environ.get("PATH", "/usr/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    # check-config prints the effective configuration as YAML, every key.
    cfg = yaml.safe_load(proc.stdout)
    cluster = cfg["cluster"]
    assert cluster["seed_dns"] == f"{HEADLESS}.{NAMESPACE}.svc.cluster.local:7946", cluster
    assert cluster["advertise"] == "10.1.2.3:7946", cluster
    assert cluster["node_id"] == FIELDS["metadata.name"], cluster
    assert cluster["enabled"] is True
    if component == "core":
        assert (cfg["server"]["smtp_port"], cfg["server"]["submission_port"]) == (2525, 2587)
        assert cfg["server"]["roles"] == ["smtp", "queue", "imap"]
        assert (cfg["server"]["imap_port"], cfg["server"]["imaps_port"]) == (2143, 2993)
        assert (cfg["server"]["pop3_port"], cfg["server"]["pop3s_port"]) == (2110, 2995)
        assert cfg["queue"]["lease_ttl"] == "4s"
    else:
        assert cfg["server"]["roles"] == ["api"]
    if variant == "spec":
        assert "@postgres.example.com:5432/mairust" in cfg["database"]["url"]
        assert cfg["storage"]["backend"] == "s3" and cfg["storage"]["options"]["region"] == "ap-northeast-1"
    else:
        assert cfg["storage"]["backend"] == "fs" and cfg["storage"]["options"]["shared"] is True
        assert cfg["delivery"]["relay_host"] == "smarthost.example.com:587"


# --------------------------------------------------------------------- other options


def test_every_option_lands(everything):
    w = workloads(everything)
    core, api = env_of(w["core"]), env_of(w["api"])
    assert container(w["core"])["image"] == "registry.example.com/mairust/core:9.9.9"
    assert container(w["api"])["image"] == "registry.example.com/mairust/api:0.1.0"
    assert w["core"]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "pull"}]
    assert core["MAIRUST_SERVER__HOSTNAME"]["value"] == "mx.example.com"
    assert core["MAIRUST_SMTP__MAX_RECIPIENTS"]["value"] == "50"
    assert core["DATABASE_URL"]["value"].endswith("@postgres.example.com:6432/mairust?sslmode=require")
    assert core["STORAGE_BACKEND"]["value"] == "fs"
    assert core["MAIRUST_STORAGE__OPTIONS__SHARED"]["value"] == "true"
    assert "S3_BUCKET" not in core
    for env in (core, api):
        assert secret_ref(env, "MAIRUST_MASTER_KEY") == ("mairust-master-key", "master-key")
        assert secret_ref(env, "MAIRUST_ADMIN_EMAIL") == ("mairust-admin", "email")
        assert secret_ref(env, "MAIRUST_ADMIN_PASSWORD") == ("mairust-admin", "password")
    core_pod = w["core"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in core_pod["volumes"]}
    assert volumes["mail"]["persistentVolumeClaim"]["claimName"] == "mairust-mail"
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    assert "volumeClaimTemplates" not in w["core"]["spec"]
    config = yaml.safe_load(everything.get("ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"])
    assert config == {"delivery": {"relay_host": "smarthost.example.com:587"}}


def test_defaults_render_a_complete_release(defaults):
    kinds = sorted({o["kind"] for o in defaults.objects})
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    core = workloads(defaults)["core"]
    assert container(core)["image"] == "mairust/core:0.1.0"
    assert yaml.safe_load(defaults.get("ConfigMap", f"{FULLNAME}-config")["data"]["config.yaml"]) == {}
    for w in workloads(defaults).values():
        labels = w["metadata"]["labels"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "mairust-0.1.0"
        assert labels["app.kubernetes.io/instance"] == RELEASE


def test_notes_name_the_secrets_to_create(spec):
    assert "mairust-db-credentials" in spec.notes
    assert "mairust-s3-credentials" in spec.notes
    assert f"{FULLNAME}-cluster" in spec.notes
    assert "http://mail.example.com/" in spec.notes


# -------------------------------------------------------------------- refused values


@pytest.mark.parametrize(
    "values, where",
    [
        ({"core": {"replicas": "three"}}, "/core/replicas"),
        ({"api": {"replicas": -1}}, "/api/replicas"),
        ({"storage": {"backend": "nfs"}}, "/storage/backend"),
        ({"core": {"terminationGracePeriodSeconds": 10}}, "/core/terminationGracePeriodSeconds"),
        ({"web": {"terminationGracePeriodSeconds": 30}}, "/web/terminationGracePeriodSeconds"),
        ({"core": {"roles": ["smtp", "mail"]}}, "/core/roles"),
        ({"ingress": {"hosts": [{"host": "x", "paths": [{"path": "/", "pathType": "Any"}]}]}}, "/ingress"),
        ({"coer": {"replicas": 1}}, "coer"),
        ({"networkPolicy": {"enabled": "yes"}}, "/networkPolicy/enabled"),
        ({"networkPolicy": {"apiFrom": [{"podselector": {}}]}}, "/networkPolicy/apiFrom/0"),
        ({"networkPolicy": {"metricsFrom": {"podSelector": {}}}}, "/networkPolicy/metricsFrom"),
        ({"networkPolicy": {"ingressFrom": []}}, "ingressFrom"),
    ],
)
def test_schema_rejects_bad_values(helm_chart, values, where):
    with pytest.raises(HelmValuesError) as err:
        helm_chart.validate_schema(values)
    assert where in str(err.value)
    with pytest.raises(HelmValuesError) as err:
        render(helm_chart, values)
    assert where in str(err.value)


def test_schema_error_for_replicas_is_clear(helm_chart):
    with pytest.raises(HelmValuesError) as err:
        render(helm_chart, {"core": {"replicas": "three"}})
    assert "at '/core/replicas': got string, want integer" in str(err.value)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"postgresql": {"enabled": True}}, "this chart bundles no PostgreSQL"),
        ({"postgresql": {"external": {"host": ""}}}, "/postgresql/external/host"),
        ({"storage": {"backend": "fs"}}, "storage.backend=fs needs storage.fs.existingClaim"),
        ({"storage": {"s3": {"existingSecret": ""}}}, "storage.s3.existingSecret is empty"),
    ],
)
def test_render_refuses_unusable_settings(helm_chart, values, message):
    with pytest.raises((HelmRenderError, HelmValuesError)) as err:
        render(helm_chart, values)
    assert message in str(err.value)


# ------------------------------------------------------------ resources and namespaces

UNITS = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(q: str | int | float) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * UNITS[unit]


@pytest.mark.parametrize("variant", ["defaults", "spec", "everything"])
def test_every_container_has_requests_and_limits(variant, request):
    rendered: Rendered = request.getfixturevalue(variant)
    for name, w in workloads(rendered).items():
        res = container(w)["resources"]
        for resource in ("cpu", "memory"):
            request_, limit = res["requests"][resource], res["limits"][resource]
            assert 0 < quantity(request_) <= quantity(limit), (name, resource, request_, limit)


def test_resources_are_values(helm_chart, defaults):
    assert container(workloads(defaults)["web"])["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "256Mi"},
    }
    assert container(workloads(defaults)["api"])["resources"]["limits"] == {
        "cpu": "1000m",
        "memory": "1Gi",
    }
    values = {"web": {"resources": {"limits": {"memory": "1Gi"}}}, "api": {"resources": None}}
    w = workloads(Rendered(render(helm_chart, values)))
    # A value given replaces that one default; null drops the block.
    assert container(w["web"])["resources"] == {
        "requests": {"cpu": "100m", "memory": "64Mi"},
        "limits": {"cpu": "500m", "memory": "1Gi"},
    }
    assert "resources" not in container(w["api"])


@pytest.mark.parametrize("variant", ["defaults", "spec", "everything"])
def test_every_object_is_in_the_release_namespace(variant, request):
    # Without it, `helm template | kubectl apply -f -` puts everything in the default namespace.
    rendered: Rendered = request.getfixturevalue(variant)
    for obj in rendered.objects:
        assert obj["metadata"].get("namespace") == NAMESPACE, (obj["kind"], obj["metadata"]["name"])


# --------------------------------------------------------------------- NetworkPolicy


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector selects a pod with these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        key, op, present = e["key"], e["operator"], e["key"] in labels
        ok = {
            "In": present and labels.get(key) in e.get("values", []),
            "NotIn": not present or labels.get(key) not in e.get("values", []),
            "Exists": present,
            "DoesNotExist": not present,
        }[op]
        if not ok:
            return False
    return True


def admits(
    policies: list[dict[str, Any]], target: dict[str, str], source, port: int, protocol: str
) -> bool:
    """Whether the policies let `source` connect to `port`/`protocol` of a pod labelled `target`.

    A source is ("pod", labels) for a pod of the release's namespace, ("peer", peer) for one of
    the peers given in the values (matched as given), or ("outside", None) for any other address.
    """
    selecting = [p for p in policies if selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(
                p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports
            ):
                continue
            peers = rule.get("from")
            if not peers:
                return True
            kind, what = source
            for peer in peers:
                if kind == "peer" and peer == what:
                    return True
                # A podSelector alone selects pods of the policy's own namespace.
                if kind == "pod" and set(peer) == {"podSelector"}:
                    if selects(peer["podSelector"], what):
                        return True
    return False


def policy_sources(rendered: Rendered) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    pods = {
        name: w["spec"]["template"]["metadata"]["labels"]
        for name, w in workloads(rendered).items()
    }
    sources = {
        "outside": ("outside", None),
        "core": ("pod", pods["core"]),
        "api": ("pod", pods["api"]),
        "web": ("pod", pods["web"]),
        # The api pods of another release of the chart in the same namespace.
        "other release": ("pod", {**pods["api"], "app.kubernetes.io/instance": "other"}),
        "ingress controller": ("peer", INGRESS_CONTROLLER),
        "prometheus": ("peer", PROMETHEUS),
        "api client": ("peer", API_CLIENT),
    }
    return pods, sources


def assert_admitted(rendered: Rendered, expected: dict[tuple[str, int, str], set[str]]) -> None:
    policies = rendered.kinds("NetworkPolicy")
    pods, sources = policy_sources(rendered)
    for (target, port, protocol), allowed in expected.items():
        got = {
            name
            for name, source in sources.items()
            if admits(policies, pods[target], source, port, protocol)
        }
        assert got == allowed, (target, port, protocol)


def test_network_policy_admits_only_the_needed_traffic(defaults, spec, everything):
    assert defaults.kinds("NetworkPolicy") == [], "off by default"
    assert spec.kinds("NetworkPolicy") == []
    policies = everything.kinds("NetworkPolicy")
    assert sorted(p["metadata"]["name"] for p in policies) == [
        f"{FULLNAME}-api",
        f"{FULLNAME}-core",
        f"{FULLNAME}-web",
    ]
    for policy in policies:
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
    pods, sources = policy_sources(everything)
    for name, labels in pods.items():
        (policy,) = [p for p in policies if selects(p["spec"]["podSelector"], labels)]
        assert policy["metadata"]["name"] == f"{FULLNAME}-{name}"
        # Every port a container declares is opened to someone: a new listener needs a rule.
        rules = policy["spec"]["ingress"]
        opened = {(p["port"], p["protocol"]) for r in rules for p in r["ports"]}
        ports = container(workloads(everything)[name])["ports"]
        declared = {(p["containerPort"], p["protocol"]) for p in ports}
        assert opened == declared, name
    everyone = set(sources)
    assert_admitted(
        everything,
        {
            # SMTP and submission from anywhere, on the ports the pods bind (the Service maps
            # 25/587 to them before the policy sees the packets: 25 itself is never the port).
            ("core", 2525, "TCP"): everyone,
            ("core", 2587, "TCP"): everyone,
            # IMAP, IMAPS, POP3, POP3S: mail clients, from anywhere.
            ("core", 2143, "TCP"): everyone,
            ("core", 2993, "TCP"): everyone,
            ("core", 2110, "TCP"): everyone,
            ("core", 2995, "TCP"): everyone,
            ("core", 25, "TCP"): set(),
            ("core", 143, "TCP"): set(),
            # Health and /metrics of the cores: Prometheus (kubelet probes come from the node,
            # which a NetworkPolicy always lets through).
            ("core", 8080, "TCP"): {"prometheus"},
            # The cluster's QUIC port: only its members, the core and api pods of this release.
            ("core", 7946, "UDP"): {"core", "api"},
            ("core", 7946, "TCP"): set(),
            ("api", 7946, "UDP"): {"core", "api"},
            # The REST API: the web pods (its /api proxy), the configured clients, Prometheus.
            ("api", 8080, "TCP"): {"web", "api client", "prometheus"},
            ("api", 2525, "TCP"): set(),
            # The web UI (web.containerPorts.http is 8081 here): the ingress controller.
            ("web", 8081, "TCP"): {"ingress controller"},
            ("web", 8080, "TCP"): set(),
        },
    )


def test_network_policy_without_peers_or_cluster(helm_chart):
    values = deep_merge(
        spec_values(), {"networkPolicy": {"enabled": True}, "cluster": {"enabled": False}}
    )
    rendered = Rendered(render(helm_chart, values))
    for policy in rendered.kinds("NetworkPolicy"):
        kubernetes_validate.validate(policy, KUBE_VERSION, strict=True)
    web = rendered.get("NetworkPolicy", f"{FULLNAME}-web")
    assert web["spec"]["ingress"] == [], "no webFrom: nothing reaches the web pods"
    everyone = set(policy_sources(rendered)[1])
    assert_admitted(
        rendered,
        {
            ("core", 2525, "TCP"): everyone,
            ("core", 2587, "TCP"): everyone,
            ("core", 8080, "TCP"): set(),
            ("core", 7946, "UDP"): set(),
            ("api", 7946, "UDP"): set(),
            ("api", 8080, "TCP"): {"web"},
            ("web", 80, "TCP"): set(),
        },
    )
    assert "networkPolicy.webFrom is empty" in rendered.notes


def test_network_policy_follows_the_container_ports(helm_chart):
    values = deep_merge(
        spec_values(),
        {
            "networkPolicy": NETWORK_POLICY,
            "core": {"containerPorts": {"smtp": 10025, "submission": 10587, "http": 9000}},
            "api": {"containerPorts": {"http": 9001}},
            "cluster": {"port": 17946},
        },
    )
    rendered = Rendered(render(helm_chart, values))
    everyone = set(policy_sources(rendered)[1])
    assert_admitted(
        rendered,
        {
            ("core", 10025, "TCP"): everyone,
            ("core", 10587, "TCP"): everyone,
            ("core", 2525, "TCP"): set(),
            ("core", 9000, "TCP"): {"prometheus"},
            ("core", 17946, "UDP"): {"core", "api"},
            ("api", 9001, "TCP"): {"web", "api client", "prometheus"},
            ("api", 17946, "UDP"): {"core", "api"},
        },
    )


# ------------------------------------------------------------------------- checkov

CHECKOV = Path(sys.executable).with_name("checkov")

# Checks that fail on this chart and do not apply to it. Everything else checkov reports is
# fixed in the chart, and each id here must still fail (so the list stays short and true).
CHECKOV_SKIPS = {
    # "Image should use digest": the images are built by the release workflow and referred to
    # by their version tag (the chart's appVersion); no digest exists when the chart is written.
    "CKV_K8S_43",
    # "Image Pull Policy should be Always": the chart pulls a version tag (its appVersion, a
    # release's x.y.z), not a moving one such as latest or edge, so IfNotPresent (the value
    # image.pullPolicy) is right; Always makes every pod start ask the registry, and fail when
    # the registry cannot be reached.
    "CKV_K8S_15",
    # "Prefer using secrets as files": MaiRust takes its database password, S3 keys, cluster
    # secret and master key from the environment (DATABASE_URL is assembled from $(PGPASSWORD));
    # it has no setting that reads them from a file.
    "CKV_K8S_35",
}
# "Pods which lack an associated NetworkPolicy": the policy is off by default because its
# peers (the ingress controller's and Prometheus's namespaces) depend on the cluster. The
# render with networkPolicy.enabled is scanned without this skip, so there it must pass.
CHECKOV_SKIPS_WITHOUT_NETWORK_POLICY = {"CKV2_K8S_6"}

CHECKOV_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/tmp"),
    # Offline: no mapping or guideline download, no check for a newer checkov on PyPI (with
    # these and --skip-download checkov opens no network connection at all, not even DNS).
    "BC_SKIP_MAPPING": "TRUE",
    "CKV_SKIP_PACKAGE_UPDATE_CHECK": "TRUE",
}


def checkov(directory: Path) -> dict[str, Any]:
    assert CHECKOV.exists(), f"no {CHECKOV}: pip install -r tests/requirements.txt"
    proc = subprocess.run(
        [str(CHECKOV), "-d", str(directory), "--framework", "kubernetes"]
        + ["--compact", "--quiet", "-o", "json", "--skip-download"],
        env=CHECKOV_ENV,
        capture_output=True,
        text=True,
        timeout=180,
    )
    # 0: nothing failed, 1: something failed; anything else is checkov failing to run.
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    assert isinstance(report, dict) and report["check_type"] == "kubernetes", proc.stdout[:500]
    return report


@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_checkov_finds_nothing_to_fix(variant, request, tmp_path):
    rendered: Rendered = request.getfixturevalue(variant)
    for path, text in rendered.manifests.items():
        if not path.endswith("NOTES.txt") and text.strip():
            (tmp_path / Path(path).name).write_text(text)
    started = time.monotonic()
    report = checkov(tmp_path)
    elapsed = time.monotonic() - started
    summary = report["summary"]
    assert summary["checkov_version"] == "3.3.30"
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] >= 14 and summary["passed"] >= 200, summary
    skips = set(CHECKOV_SKIPS)
    if not rendered.kinds("NetworkPolicy"):
        skips |= CHECKOV_SKIPS_WITHOUT_NETWORK_POLICY
    failed = report["results"]["failed_checks"]
    unexpected = [
        f"{f['check_id']} {f['resource']}: {f['check_name']}"
        for f in failed
        if f["check_id"] not in skips
    ]
    assert unexpected == [], "\n".join(unexpected)
    assert {f["check_id"] for f in failed} == skips, "a skipped check passes now: drop it"
    print(f"checkov {summary['checkov_version']}: {summary} in {elapsed:.1f} s")
