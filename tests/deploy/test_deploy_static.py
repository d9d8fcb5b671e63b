"""Static checks of deploy/: every file parses, and every name it uses exists in the code.

* YAML and JSON files parse; the Kubernetes overlays render with `kubectl kustomize`.
* Every metric in the Grafana dashboard and the alert rules is registered by the services'
  metrics modules, with the labels the expressions, legends and annotations use.
* Every `XR_*` variable and every region-file key the manifests, systemd units and the
  Dockerfile name maps to a field of `shared.settings.Settings`; each overlay's region file
  validates with `load_settings`.
* Rendered workloads probe /healthz and /readyz on the admin port the region file configures,
  mount every file the region file names, and stop within their grace period.
* The NATS Helm values build the super-cluster of nats-conf/prod.toml: cluster and gateway
  names, gateway URLs, users and permissions, secrets.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, get_args, get_origin

import pytest
import yaml
from prometheus_client import REGISTRY
from pydantic import BaseModel

import services.bridge.metrics
import services.broadcaster.metrics
import services.replayer.metrics
import shared.metrics
from services.bridge.service import _FINAL_DRAIN_S
from services.xregion import natsconf
from shared.regions import key_belongs_to
from shared.settings import (
    BridgeSettings,
    BroadcasterSettings,
    NatsSettings,
    ReplayerSettings,
    Settings,
    load_settings,
)
from tests.deploy.kustomize import render
from tests.harness.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
OVERLAYS = DEPLOY / "k8s" / "overlays"
HELM = DEPLOY / "helm"
REGIONS = ("us-east", "eu-west", "ap-south")
SERVICES = ("bridge", "broadcaster", "replayer")
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# Labels the scrape configuration adds to every target (deploy/prometheus/scrape.yaml).
TARGET_LABELS = frozenset({"region", "component", "job", "instance", "namespace", "pod"})
PROMETHEUS_BUILTINS = frozenset({"up"})
CONFIG_PATH = "/etc/xregion/xregion.toml"

_METRICS_MODULES = (
    services.bridge.metrics,
    services.broadcaster.metrics,
    services.replayer.metrics,
    shared.metrics,
)
_XR_METRIC_RE = re.compile(r"\b(xr_[a-z0-9_]+)")
_SELECTOR_RE = re.compile(r"\b([a-z_][a-z0-9_]*)\s*\{([^}]*)\}")
_MATCHER_RE = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING_RE = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_LEGEND_RE = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")
_ANNOTATION_LABEL_RE = re.compile(r"\$labels\.([a-zA-Z_]\w*)")
_ENV_RE = re.compile(r"\bXR_[A-Z0-9_]+")
_DURATION_RE = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


# --------------------------------------------------------------------------- helpers


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _settings_path_exists(env_name: str) -> bool:
    """Does `XR_A__B__C` name a field of Settings (nested models, dict keys for services)?"""
    parts = env_name.removeprefix("XR_").lower().split("__")
    model: type[BaseModel] = Settings
    index = 0
    while index < len(parts):
        field = model.model_fields.get(parts[index])
        if field is None:
            return False
        index += 1
        if index == len(parts):
            return True
        annotation = field.annotation
        if get_origin(annotation) is dict:
            value_type = get_args(annotation)[1]
            index += 1  # the dict key, e.g. the service name
            if index == len(parts):
                return True
            annotation = value_type
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return False
        model = annotation
    return False


def _env_name_ok(name: str) -> bool:
    # XR_CONFIG is where load_settings finds the region file, not a setting.
    return name == "XR_CONFIG" or _settings_path_exists(name)


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("XR_")]:
        monkeypatch.delenv(name)


def _load_region_file(path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    _clean_env(monkeypatch)
    return load_settings(path, env={})


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def _duration_s(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = _DURATION_RE.findall(text)
    assert "".join(n + u for n, u in parts) == text, f"bad duration {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def shutdown_budget_s(service: str) -> float:
    """How long a service may take after SIGTERM with default settings (service.py docs)."""
    own = {
        "bridge": BridgeSettings().shutdown_timeout_s + _FINAL_DRAIN_S,
        "broadcaster": BroadcasterSettings().shutdown_timeout_s,
        "replayer": ReplayerSettings().shutdown_timeout_s,
    }[service]
    return own + NatsSettings().drain_timeout_s


# --------------------------------------------------------------------------- files parse


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    yamls = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    jsons = sorted(DEPLOY.rglob("*.json"))
    assert len(yamls) >= 15, "deploy/ lost its manifests"
    assert jsons, "deploy/ lost its dashboard"
    for path in yamls:
        assert _yaml_docs(path), f"{path}: no YAML document"
    for path in jsons:
        assert json.loads(path.read_text(encoding="utf-8")), f"{path}: empty JSON"


# --------------------------------------------------------------------------- metrics


@functools.cache
def registry_metrics() -> dict[str, frozenset[str]]:
    """Sample name -> label names, for every metric the services register.

    A counter `x` exposes `x_total` (and `x_created`), a histogram `x_bucket`, `x_sum`,
    `x_count`, an info `x_info`: the family name itself is no series to query.
    """
    assert _METRICS_MODULES  # imported for their registrations
    labels: dict[str, frozenset[str]] = {}
    # prometheus_client has no public accessor for a metric's label names or samples.
    for collector, names in dict(vars(REGISTRY)["_collector_to_names"]).items():
        label_names = frozenset(getattr(collector, "_labelnames", ()))
        kind, base = getattr(collector, "_type", None), getattr(collector, "_name", None)
        for name in names:
            if name == base and kind in {"counter", "histogram", "summary", "info"}:
                continue
            labels[name] = label_names | ({"le"} if name.endswith("_bucket") else set())
    return labels


def _expr_metrics(expr: str) -> set[str]:
    found = set(_XR_METRIC_RE.findall(expr))
    found |= {m for m, _ in _SELECTOR_RE.findall(expr) if m in PROMETHEUS_BUILTINS}
    return found


def _allowed_labels(expr: str) -> set[str]:
    known = registry_metrics()
    allowed = set(TARGET_LABELS)
    for metric in _expr_metrics(expr):
        allowed |= known.get(metric, frozenset())
    return allowed


def _label_problems(expr: str) -> list[str]:
    """Metrics unknown to the registry, and labels no metric of the expression has."""
    known = registry_metrics()
    problems = [
        f"unknown metric {m}"
        for m in sorted(_expr_metrics(expr))
        if m not in known and m not in PROMETHEUS_BUILTINS
    ]
    for metric, matchers in _SELECTOR_RE.findall(expr):
        if metric in PROMETHEUS_BUILTINS:
            have = set(TARGET_LABELS)
        elif metric in known:
            have = set(known[metric]) | TARGET_LABELS
        else:
            continue
        problems += [
            f"{metric} has no label {label}"
            for label in _MATCHER_RE.findall(matchers)
            if label not in have
        ]
    allowed = _allowed_labels(expr)
    for group in _GROUPING_RE.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label not in allowed:
                problems.append(f"no metric of the expression has label {label}")
    return problems


def test_label_checker_rejects_unknown_metrics_and_labels() -> None:
    assert _label_problems('sum by (target) (xr_broadcaster_backlog{region="a"})') == []
    assert _label_problems("rate(xr_replayer_lag_seconds_bucket[5m])") == []
    assert _label_problems("xr_no_such_metric > 0")
    assert _label_problems('xr_replayer_backlog{target="a"}')  # the gauge has no labels
    assert _label_problems("sum by (target) (xr_dlq_messages)")
    assert _label_problems("rate(xr_replayer_events[5m])")  # the counter's family name


def _rules() -> list[dict[str, Any]]:
    (doc,) = _yaml_docs(DEPLOY / "prometheus" / "rules.yaml")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_use_registered_metrics_and_labels() -> None:
    for rule in _rules():
        expr = rule["expr"]
        assert not _label_problems(expr), (rule["alert"], _label_problems(expr))
        allowed = _allowed_labels(expr)
        for text in rule["annotations"].values():
            used = set(_ANNOTATION_LABEL_RE.findall(text))
            assert used <= allowed, (rule["alert"], used - allowed)


def test_alert_rules_are_complete_and_cover_the_contract_metrics() -> None:
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    for rule in rules:
        assert _duration_s(rule["for"]) > 0, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert rule["annotations"]["description"].strip(), rule["alert"]
    used = {m for rule in rules for m in _expr_metrics(rule["expr"])}
    assert {
        "xr_replayer_lag_seconds_bucket",
        "xr_replication_canary_age_seconds",
        "xr_dlq_messages",
        "xr_bridge_outbox_depth",
        "xr_broadcaster_paused",
        "xr_nats_connected",
    } <= used


def test_alert_rules_pass_their_promtool_unit_tests() -> None:
    promtool = require_tool("promtool", "Debian's prometheus package: make dev-tools")
    for args in (["check", "rules", "rules.yaml"], ["test", "rules", "rules.test.yaml"]):
        done = subprocess.run(
            [promtool, *args],
            cwd=DEPLOY / "prometheus",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "grafana" / "xregion.json").read_text("utf-8"))
    return data


def _dashboard_targets() -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in _dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target


def test_dashboard_uses_registered_metrics_labels_and_legends() -> None:
    for title, target in _dashboard_targets():
        expr = target["expr"]
        assert not _label_problems(expr), (title, _label_problems(expr))
        assert 'region=~"$region"' in expr, f"{title}: not filtered by the region variable"
        grouped = {x.strip() for g in _GROUPING_RE.findall(expr) for x in g.split(",")}
        legend = set(_LEGEND_RE.findall(target.get("legendFormat", "")))
        shown = grouped or _allowed_labels(expr)
        assert legend <= shown | {"pod", "instance"}, (title, legend - shown)
    variables = _dashboard()["templating"]["list"]
    for variable in variables:
        if variable["type"] == "query":
            assert not _label_problems(variable["definition"]), variable["name"]


def test_dashboard_has_the_xregion_top_panels() -> None:
    used = {m for _, target in _dashboard_targets() for m in _expr_metrics(target["expr"])}
    assert {
        "xr_broadcaster_forwarded_total",
        "xr_replayer_events_total",
        "xr_replayer_lag_seconds_bucket",
        "xr_replication_canary_age_seconds",
        "xr_broadcaster_backlog",
        "xr_replayer_backlog",
        "xr_dlq_messages",
        "xr_replayer_upstream_retries_total",
        "xr_bridge_outbox_depth",
        "xr_broadcaster_paused",
    } <= used
    exprs = " ".join(t["expr"] for _, t in _dashboard_targets())
    assert "histogram_quantile(0.5," in exprs
    assert "histogram_quantile(0.99," in exprs
    assert 'outcome="retried"' in exprs


def test_dashboard_schema() -> None:
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash["uid"]
    assert dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["region"]["datasource"]["uid"] == "${datasource}"
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dash["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]
                assert target["refId"]


# --------------------------------------------------------------------------- settings names


def test_settings_path_mapping_accepts_fields_and_rejects_the_rest() -> None:
    for good in ("XR_NATS__SERVERS", "XR_DATA_DIR", "XR_SERVICES__CATALOG__UPSTREAM"):
        assert _settings_path_exists(good), good
    for bad in ("XR_NATS__USR", "XR_NATS_USER", "XR_BRIDGE__PORT", "XR_SERVICES__X__NOPE"):
        assert not _settings_path_exists(bad), bad
    assert not _settings_path_exists("XR_REGION__X")
    assert not _env_name_ok("XR_NATS__USER__X")


def _scanned_files() -> list[Path]:
    """Files where XR_* names are xregion settings (Helm's XR_NATS_* are nats-server's)."""
    files = [DEPLOY / "docker" / "Dockerfile", ROOT / ".dockerignore"]
    files += sorted((DEPLOY / "systemd").iterdir())
    files += sorted(p for p in (DEPLOY / "k8s").rglob("*") if p.is_file())
    return files


def test_every_xr_variable_named_in_deploy_is_a_setting() -> None:
    seen: set[str] = set()
    for path in _scanned_files():
        names = set(_ENV_RE.findall(path.read_text(encoding="utf-8")))
        bad = sorted(n for n in names if not _env_name_ok(n))
        assert not bad, f"{path.relative_to(ROOT)}: not settings: {bad}"
        seen |= names
    assert {"XR_CONFIG", "XR_NATS__USER", "XR_NATS__PASSWORD"} <= seen


@pytest.mark.parametrize("region", REGIONS)
def test_overlay_region_file_validates(region: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _load_region_file(OVERLAYS / region / "xregion.toml", monkeypatch)
    assert settings.region == region
    assert sorted(settings.regions) == sorted(REGIONS)
    assert settings.signing.mode == "ed25519"
    assert settings.signing.key_id is not None
    assert key_belongs_to(settings.signing.key_id, region)
    assert settings.streams.replicas == 3  # the chart hides peers from clients (no_advertise)
    for service in SERVICES:
        assert getattr(settings, service).admin_listen.startswith("0.0.0.0:"), service
    assert settings.bridge.listen.startswith("0.0.0.0:")
    assert all(url.startswith("tls://") for url in settings.nats.servers)
    assert settings.nats.tls_ca is not None


@pytest.mark.parametrize("path", sorted((DEPLOY / "regions").glob("*.toml")), ids=str)
def test_local_region_files_still_validate(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _load_region_file(path, monkeypatch).region == path.stem


def test_overlay_region_files_differ_only_where_regions_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dumps = []
    for region in REGIONS:
        data = _load_region_file(OVERLAYS / region / "xregion.toml", monkeypatch).model_dump()
        data.pop("region")
        data["signing"].pop("key_id")
        for service in data["services"].values():
            service.pop("upstream")
        dumps.append(data)
    assert dumps[0] == dumps[1] == dumps[2]


# --------------------------------------------------------------------------- Kubernetes


@functools.cache
def rendered(region: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(OVERLAYS / region))


def _objects(region: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in rendered(region) if o["kind"] == kind}


def _workloads(region: str) -> dict[str, dict[str, Any]]:
    """Service name -> its Deployment or StatefulSet."""
    found = {}
    for obj in rendered(region):
        if obj["kind"] in WORKLOAD_KINDS:
            component = obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            found[component] = obj
    return found


def _container(workload: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = container
    return result


def _rendered_settings(region: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    (config_map,) = [
        o for name, o in _objects(region, "ConfigMap").items() if name.startswith("xregion-config-")
    ]
    path = tmp_path / f"{region}.toml"
    path.write_text(config_map["data"]["xregion.toml"], encoding="utf-8")
    return _load_region_file(path, monkeypatch)


@pytest.mark.parametrize("region", REGIONS)
def test_overlay_renders_the_stack(region: str) -> None:
    workloads = _workloads(region)
    assert set(workloads) == set(SERVICES)
    assert workloads["bridge"]["kind"] == "StatefulSet"
    assert {"xregion-bridge", "xregion-metrics"} <= set(_objects(region, "Service"))
    assert "xregion-provision" in _objects(region, "CronJob")
    assert not _objects(region, "Secret"), "secrets must not be shipped in the repository"
    for service, workload in workloads.items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels["xregion.io/region"] == region, service
        assert workload["spec"]["replicas"] >= 2, service
        image = _container(workload)["image"]
        assert re.fullmatch(r"[\w.-]+(:\d+)?/[\w./-]+(:[\w.-]+|@sha256:\w+)", image), image
        assert not image.endswith(":latest"), image
        assert _container(workload)["args"][0] == service


@pytest.mark.parametrize("region", REGIONS)
def test_first_install_phase_selects_what_provisioning_needs(region: str) -> None:
    """README step 2 applies `-l app.kubernetes.io/component in (namespace,config,provision)`:
    exactly the namespace, the ConfigMaps the provisioning job mounts, and the job."""
    phase = {"namespace", "config", "provision"}
    selected = {
        (o["kind"], o["metadata"]["name"].rsplit("-", 1)[0] if o["kind"] == "ConfigMap" else "")
        for o in rendered(region)
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") in phase
    }
    assert selected == {
        ("Namespace", ""),
        ("ConfigMap", "xregion-config"),
        ("ConfigMap", "xregion-trusted-keys"),
        ("CronJob", ""),
    }
    (job,) = _objects(region, "CronJob").values()
    assert job["spec"]["suspend"] is True
    template = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    config_maps = {v["configMap"]["name"] for v in template["volumes"] if "configMap" in v}
    assert config_maps <= set(_objects(region, "ConfigMap"))
    (container,) = template["containers"]
    assert container["args"] == ["provision", "--config", CONFIG_PATH]
    assert _covered(CONFIG_PATH, [m["mountPath"] for m in container["volumeMounts"]])


@pytest.mark.parametrize("region", REGIONS)
def test_probes_use_the_admin_port_of_the_region_file(
    region: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _rendered_settings(region, tmp_path, monkeypatch)
    for service, workload in _workloads(region).items():
        container = _container(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["admin"] == _port(getattr(settings, service).admin_listen), service
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (service, probe)
            assert get["port"] in ("admin", ports["admin"]), (service, probe)
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    bridge_ports = {p["name"]: p for p in _container(_workloads(region)["bridge"])["ports"]}
    assert bridge_ports["http"]["containerPort"] == _port(settings.bridge.listen)
    (service_port,) = _objects(region, "Service")["xregion-bridge"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"


def _mounts(workload: Mapping[str, Any]) -> list[str]:
    return [m["mountPath"] for m in _container(workload).get("volumeMounts", [])]


def _covered(path: Path | str, mounts: list[str]) -> bool:
    text = str(path)
    return any(text == m or text.startswith(m.rstrip("/") + "/") for m in mounts)


@pytest.mark.parametrize("region", REGIONS)
def test_every_file_the_region_file_names_is_mounted(
    region: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _rendered_settings(region, tmp_path, monkeypatch)
    workloads = _workloads(region)
    needs = {
        "bridge": [
            settings.data_dir,
            settings.signing.private_key_file,
            settings.signing.trusted_keys_file,
        ],
        "replayer": [settings.signing.private_key_file, settings.signing.trusted_keys_file],
        "broadcaster": [settings.signing.private_key_file, settings.signing.trusted_keys_file],
    }
    for service, workload in workloads.items():
        env = {e["name"]: e for e in _container(workload)["env"]}
        assert env["XR_CONFIG"]["value"] == CONFIG_PATH
        for path in [CONFIG_PATH, settings.nats.tls_ca, *needs[service]]:
            assert path is not None, service
            assert _covered(path, _mounts(workload)), (service, path)
        assert _covered("/tmp", _mounts(workload)), service
    claims = [c["metadata"]["name"] for c in workloads["bridge"]["spec"]["volumeClaimTemplates"]]
    data_mount = next(
        m
        for m in _container(workloads["bridge"])["volumeMounts"]
        if m["mountPath"] == str(settings.data_dir)
    )
    assert data_mount["name"] in claims, "the outbox must live on the pod's own volume"


@pytest.mark.parametrize("region", REGIONS)
def test_workloads_are_hardened_and_bounded(region: str) -> None:
    for service, workload in _workloads(region).items():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, service
        container = _container(workload)
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, service
        assert security["allowPrivilegeEscalation"] is False, service
        assert security["capabilities"]["drop"] == ["ALL"], service
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound]), (service, bound)
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep_s = int(pre_stop["command"][-1]) if pre_stop else 0
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= sleep_s + shutdown_budget_s(service) + 5, (service, grace)


@pytest.mark.parametrize("region", REGIONS)
def test_every_workload_has_a_disruption_budget(region: str) -> None:
    budgets = list(_objects(region, "PodDisruptionBudget").values())
    for service, workload in _workloads(region).items():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [
            b for b in budgets if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(matching) == 1, service
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()


def _secret_names(node: Any) -> set[str]:
    """Secrets a manifest uses: env secretKeyRefs and secret volumes."""
    names: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("secretKeyRef"), dict):
            names.add(node["secretKeyRef"]["name"])
        if isinstance(node.get("secret"), dict):
            names.add(node["secret"]["secretName"])
        for value in node.values():
            names |= _secret_names(value)
    elif isinstance(node, list):
        for value in node:
            names |= _secret_names(value)
    return names


@pytest.mark.parametrize("region", REGIONS)
def test_referenced_secrets_are_documented(region: str) -> None:
    names = _secret_names(list(rendered(region)))
    assert {"xregion-signing", "xregion-nats-ca", "xregion-nats-bridge"} <= names
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    missing = sorted(n for n in names if n not in readme)
    assert not missing, f"secrets the README does not explain how to create: {missing}"


# --------------------------------------------------------------------------- NATS Helm values


def _merge(base: Any, over: Any) -> Any:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = _merge(base.get(key), value)
        return out
    return over


def _helm_values(region: str) -> dict[str, Any]:
    (common,) = _yaml_docs(HELM / "nats-common.values.yaml")
    (own,) = _yaml_docs(HELM / f"nats-{region}.values.yaml")
    merged: dict[str, Any] = _merge(common, own)
    return merged


def _helm_form(value: Any) -> Any:
    """natsconf's config data as the chart's values spell it (`<< $VAR >>` for env refs)."""
    if isinstance(value, natsconf.EnvRef):
        return f"<< ${value.name} >>"
    if isinstance(value, dict):
        return {k: _helm_form(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_helm_form(v) for v in value]
    return value


@functools.cache
def _prod() -> natsconf.Topology:
    return natsconf.load_topology(ROOT / "nats-conf" / "prod.toml")


def _prod_server(region: str) -> dict[str, Any]:
    conf: dict[str, Any] = _helm_form(natsconf.server_config(_prod(), f"{region}-1"))
    return conf


@pytest.mark.parametrize("region", REGIONS)
def test_helm_values_form_the_prod_cluster_and_gateways(region: str) -> None:
    config = _helm_values(region)["config"]
    expected = _prod_server(region)
    servers = next(r.servers for r in _prod().regions if r.name == region)
    assert config["cluster"]["enabled"]
    assert config["cluster"]["replicas"] == servers
    assert config["cluster"]["merge"]["name"] == expected["cluster"]["name"] == region
    assert len(config["cluster"]["merge"]["routes"]) == servers
    gateway = config["gateway"]
    assert gateway["enabled"]
    assert gateway["merge"]["name"] == region
    assert gateway["merge"]["gateways"] == expected["gateway"]["gateways"]
    assert gateway["merge"]["authorization"] == expected["gateway"]["authorization"]
    assert config["serverNamePrefix"] == f"{region}-"
    assert config["merge"]["server_tags"] == expected["server_tags"]


@pytest.mark.parametrize("region", REGIONS)
def test_helm_values_advertise_the_prod_gateway_addresses(region: str) -> None:
    values = _helm_values(region)
    expected = _prod_server(region)
    (own,) = [g for g in expected["gateway"]["gateways"] if g["name"] == region]
    start = values["statefulSet"]["merge"]["spec"]["ordinals"]["start"]
    pods = [f"nats-{start + i}" for i in range(values["config"]["cluster"]["replicas"])]
    template = values["container"]["env"]["GATEWAY_ADVERTISE"].strip('"')
    advertised = [f"nats://{template.replace('$(POD_NAME)', pod)}" for pod in pods]
    assert advertised == own["urls"]
    assert values["config"]["gateway"]["merge"]["advertise"] == "<< $GATEWAY_ADVERTISE >>"
    balancers = {
        r["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"]: r
        for r in values["extraResources"]
    }
    assert sorted(f"nats://{host}:7222" for host in balancers) == sorted(own["urls"])
    for host, service in balancers.items():
        pod = service["spec"]["selector"]["statefulset.kubernetes.io/pod-name"]
        assert host.startswith(f"{pod}."), host


@pytest.mark.parametrize("region", REGIONS)
def test_helm_values_match_prod_jetstream_tls_limits_and_users(region: str) -> None:
    config = _helm_values(region)["config"]
    expected = _prod_server(region)
    jetstream = config["jetstream"]
    assert jetstream["enabled"]
    assert jetstream["fileStore"]["enabled"]
    assert jetstream["fileStore"]["pvc"]["enabled"]
    assert config["merge"]["max_payload"] == expected["max_payload"]
    assert config["merge"]["max_pending"] == expected["max_pending"]
    tls = _prod().tls
    assert config["nats"]["tls"]["enabled"] is tls.enabled
    assert config["nats"]["tls"]["merge"]["verify"] is tls.verify_clients
    for link in ("cluster", "gateway"):
        assert config[link]["tls"]["enabled"] is tls.enabled, link
        assert config[link]["tls"]["merge"]["verify"] is True, link
    assert config["merge"]["accounts"] == expected["accounts"], (
        "users or permissions drifted from natsconf: regenerate the accounts block of "
        "deploy/helm/nats-common.values.yaml (deploy/README.md, 'Keeping the NATS values in sync')"
    )
    assert config["merge"]["system_account"] == expected["system_account"]


@pytest.mark.parametrize("region", REGIONS)
def test_helm_values_provide_every_secret_the_config_reads(region: str) -> None:
    env = _helm_values(region)["container"]["env"]
    from_secret = {
        name for name, value in env.items() if isinstance(value, dict) and "valueFrom" in value
    }
    assert from_secret == set(natsconf.env_references(_prod()))
    for name in from_secret:
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "nats-auth", "key": name}
    assert "nats-auth" in (DEPLOY / "README.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- Docker, systemd


def _dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "docker" / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n\s*", " ", text)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_pinned_non_root_and_healthchecked() -> None:
    instructions = _dockerfile()
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    bases = [a.split()[0] for op, a in instructions if op == "FROM"]
    assert len(bases) >= 2, "multi-stage build"
    for base in bases:
        image = args.get(base.strip("${}"), base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image
    users = [a for op, a in instructions if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    (entrypoint,) = [a for op, a in instructions if op == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["xregion"]
    env = " ".join(a for op, a in instructions if op == "ENV")
    assert f"XR_CONFIG={CONFIG_PATH}" in env
    (healthcheck,) = [a for op, a in instructions if op == "HEALTHCHECK"]
    assert "healthcheck.py" in healthcheck
    for op, arg in instructions:
        if op == "COPY" and "--from" not in arg:
            for source in arg.split()[:-1]:
                assert (ROOT / source).exists(), source
                assert source.rstrip("/") in (ROOT / ".dockerignore").read_text(), source


def _load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "xr_healthcheck", DEPLOY / "docker" / "healthcheck.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_healthcheck_finds_the_service_and_its_admin_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hc = _load_healthcheck()
    python, xregion = "/opt/xregion/bin/python", "/opt/xregion/bin/xregion"
    assert hc.service_command([python, xregion, "bridge"]) == ("bridge", None)
    assert hc.service_command([xregion, "--log-level", "info", "replayer", "--config", "f"]) == (
        "replayer",
        "f",
    )
    assert hc.service_command([xregion, "provision", "--config", "f"]) is None
    assert hc.service_command([python, "/opt/xregion/healthcheck.py"]) is None
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "cmdline").write_bytes(b"/sbin/tini\0--\0xregion\0broadcaster\0")
    assert hc.find_service(tmp_path) == ("broadcaster", None)
    assert hc.health_url("0.0.0.0:9181") == "http://127.0.0.1:9181/healthz"
    assert hc.health_url("[::]:9182") == "http://[::1]:9182/healthz"
    _clean_env(monkeypatch)
    config = str(OVERLAYS / "us-east" / "xregion.toml")
    assert hc.admin_listen("replayer", config) == "0.0.0.0:9182"
    monkeypatch.setenv("XR_BRIDGE__ADMIN_LISTEN", "0.0.0.0:9999")
    assert hc.admin_listen("bridge", config) == "0.0.0.0:9999"


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_healthcheck_probe_reports_the_status() -> None:
    hc = _load_healthcheck()
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert hc.probe(f"{base}/healthz") is None
        assert "503" in hc.probe(f"{base}/other")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert hc.probe(f"{base}/healthz", timeout_s=1.0) is not None  # nobody listens now


def _unit(path: Path) -> dict[str, list[str]]:
    """`Section.Key` -> values, in order (systemd keys may repeat)."""
    entries: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return entries


def test_systemd_unit_is_hardened_and_stops_gracefully() -> None:
    unit = _unit(DEPLOY / "systemd" / "xregion@.service")
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Service.User"] not in ("root", "0")
    assert one["Service.Group"]
    assert unit["Service.EnvironmentFile"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
        "KillSignal": "SIGTERM",
        "CapabilityBoundingSet": "",
    }.items():
        assert one[f"Service.{key}"] == value, key
    data_dir = str(Settings.model_fields["data_dir"].default)
    assert data_dir in one["Service.ReadWritePaths"].split()
    stop_s = _duration_s(one["Service.TimeoutStopSec"])
    assert stop_s >= max(shutdown_budget_s(s) for s in SERVICES) + 5
    exec_start = one["Service.ExecStart"].split()
    assert exec_start[1:] == ["%i", "--config", CONFIG_PATH]
    assert f"XR_CONFIG={CONFIG_PATH}" in unit["Service.Environment"]


def test_provision_unit_runs_provision_with_the_region_file() -> None:
    unit = _unit(DEPLOY / "systemd" / "xregion-provision.service")
    assert unit["Service.Type"] == ["oneshot"]
    assert unit["Service.ExecStart"][-1].split()[1:] == ["provision", "--config", CONFIG_PATH]
    assert unit["Service.NoNewPrivileges"] == ["yes"]


def test_region_file_keys_in_systemd_env_example_are_settings() -> None:
    text = (DEPLOY / "systemd" / "env.example").read_text(encoding="utf-8")
    assigned = re.findall(r"^#?\s*(XR_[A-Z0-9_]+)=", text, flags=re.MULTILINE)
    assert assigned
    assert all(_env_name_ok(name) for name in assigned), assigned
