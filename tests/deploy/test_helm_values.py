"""The NATS Helm values are values the chart version they name accepts.

The chart (nats/nats 1.3.16) ships no values.schema.json and Helm accepts any key, so a typo
in our values is silently ignored. Offline, without helm or the chart's templates, this checks:

* every key path of each values file, and of each region's merge of common + region, exists
  in the chart's default values.yaml of that version (vendored in nats-chart-<version>/), with
  a value of the default's type; below `merge`, `patch` and any default that is an empty map
  or list the chart takes free-form input (a NATS config or Kubernetes object fragment, a
  JSON patch, a map of names) and only the rules below apply;
* the chart's own rules on that input: env values are a string or a map, `patch` is a list of
  JSON patch operations;
* the Kubernetes fragments, put where the chart's templates put them (the `extraResources`
  objects as they are; the StatefulSet built from `statefulSet.merge`, `podTemplate.merge`,
  the container's `env`, `resources` and `merge`, the spread constraints and the JetStream
  volume claim), against the strict Kubernetes schemas of the versions deploy/README.md names;
  a Kubernetes `merge` or `patch` the model does not place (e.g. `service.merge`) fails.

The StatefulSet is a reduction of the chart's files/stateful-set/*.yaml at that version, not
its output: the labels, probes, volumes and other containers the chart adds are left out.
Not checked: what the templates render from the rest (`helm template` needs a helm binary, and
no package for Linux and Python 3.11 was found to ship one); the NATS configuration under
`config.*.merge` is compared with nats-conf/prod.toml by test_deploy_static.py instead.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.k8s_schema import schema_errors, validated_versions

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
HELM = DEPLOY / "helm"
CHART_VERSION = "1.3.16"
CHART = Path(__file__).resolve().parent / f"nats-chart-{CHART_VERSION}"
REGIONS = ("us-east", "eu-west", "ap-south")
VALUES_FILES = sorted(HELM.glob("*.values.yaml"))
VERSIONS = validated_versions()
# The chart's selector labels for release "nats" (templates/_helpers.tpl, nats.selectorLabels).
_SELECTOR = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": "nats"}
# Maps of names the chart turns into env lists (templates/_helpers.tpl, nats.env).
_ENV_MAPS = ("container.env", "reloader.env", "promExporter.env", "natsBox.container.env")
_PATCH_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def chart_defaults() -> dict[str, Any]:
    return _load(CHART / "values.yaml")


def merge_values(base: Any, over: Any) -> Any:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            out[key] = merge_values(base.get(key), value)
        return out
    return copy.deepcopy(over)


def region_values(region: str) -> dict[str, Any]:
    merged: dict[str, Any] = merge_values(
        _load(HELM / "nats-common.values.yaml"), _load(HELM / f"nats-{region}.values.yaml")
    )
    return merged


# --------------------------------------------------------------------------- key paths


def _type_problem(where: str, value: Any, default: Any) -> str | None:
    if value is None:
        return None  # Helm drops a key set to null: the template sees no value
    if default is None:
        ok = isinstance(value, str | int | float | bool)  # documented as an optional scalar
    elif isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float)
    else:
        ok = isinstance(value, type(default))
    kind = "a scalar" if default is None else type(default).__name__
    return None if ok else f"{where}: {value!r} is not {kind} like the chart's default"


def key_problems(values: dict[str, Any], defaults: dict[str, Any], path: str = "") -> list[str]:
    """Key paths of `values` the chart's defaults do not have, or with another type."""
    problems: list[str] = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in defaults:
            problems.append(f"{where}: the chart {CHART_VERSION} has no such value")
            continue
        default = defaults[key]
        problem = _type_problem(where, value, default)
        if problem:
            problems.append(problem)
        elif isinstance(value, dict) and default and key != "merge":
            problems += key_problems(value, default, where)
    return problems


def _at(values: dict[str, Any], dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _patches(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if not isinstance(node, dict):
        return []
    found = [(f"{path}patch", node["patch"])] if "patch" in node else []
    for key, value in node.items():
        if key not in ("merge", "patch"):
            found += _patches(value, f"{path}{key}.")
    return found


def chart_rule_problems(values: dict[str, Any]) -> list[str]:
    """The chart's own rules on free-form input: env values and JSON patches."""
    problems = [
        f"{where}.{name}: an env value must be a string or a map (or the chart fails)"
        for where in _ENV_MAPS
        for name, value in (_at(values, where) or {}).items()
        if not isinstance(value, str | dict)
    ]
    for where, patch in _patches(values):
        if not isinstance(patch, list):
            problems.append(f"{where}: a JSON patch is a list of operations")
            continue
        problems += [
            f"{where}[{i}]: not a JSON patch operation"
            for i, op in enumerate(patch)
            if not (isinstance(op, dict) and op.get("op") in _PATCH_OPS and "path" in op)
        ]
    return problems


def all_problems(values: dict[str, Any]) -> list[str]:
    return key_problems(values, chart_defaults()) + chart_rule_problems(values)


# --------------------------------------------------------------------------- Kubernetes fragments


def merge_overwrite(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """sprig's mergeOverwrite, as the chart applies each `merge` to the object it renders."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_overwrite(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _env(env: dict[str, Any]) -> list[dict[str, Any]]:
    # nats.env: a string is a value, a map is the rest of the EnvVar; sorted by name.
    return [
        {**v, "name": k} if isinstance(v, dict) else {"name": k, "value": v}
        for k, v in sorted(env.items())
    ]


def _nats_container(values: dict[str, Any]) -> dict[str, Any]:
    own = values.get("container", {})
    image = merge_values(chart_defaults()["container"]["image"], own.get("image") or {})
    prefix = values.get("config", {}).get("serverNamePrefix", "")
    container = {
        "name": "nats",
        "image": f"{image['repository']}:{image['tag']}",
        "args": ["--config", "/etc/nats-config/nats.conf"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "SERVER_NAME", "value": f"{prefix}$(POD_NAME)"},
            *_env(own.get("env") or {}),
        ],
        "resources": own.get("resources") or {},
    }
    return merge_overwrite(container, own.get("merge") or {})


def _volume_claims(values: dict[str, Any]) -> list[dict[str, Any]]:
    jetstream = values.get("config", {}).get("jetstream", {})
    store = jetstream.get("fileStore", {})
    pvc = store.get("pvc", {})
    if not (jetstream.get("enabled") and store.get("enabled", True) and pvc.get("enabled", True)):
        return []
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": str(pvc.get("size", "10Gi"))}},
    }
    if pvc.get("storageClassName"):
        spec["storageClassName"] = str(pvc["storageClassName"])
    claim = {"metadata": {"name": "nats-js"}, "spec": spec}
    return [merge_overwrite(claim, pvc.get("merge") or {})]


def nats_statefulset(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's StatefulSet reduced to what our values put into it."""
    template = values.get("podTemplate", {})
    spread = [
        {**constraint, "topologyKey": key, "labelSelector": {"matchLabels": _SELECTOR}}
        for key, constraint in (template.get("topologySpreadConstraints") or {}).items()
    ]
    pod: dict[str, Any] = {
        "metadata": {"labels": dict(_SELECTOR)},
        "spec": {"containers": [_nats_container(values)], "terminationGracePeriodSeconds": 60},
    }
    if spread:
        pod["spec"]["topologySpreadConstraints"] = spread
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": values.get("fullnameOverride") or "nats", "namespace": "nats"},
        "spec": {
            "selector": {"matchLabels": dict(_SELECTOR)},
            "replicas": values.get("config", {}).get("cluster", {}).get("replicas", 1),
            "serviceName": "nats-headless",
            "podManagementPolicy": "Parallel",
            "template": merge_overwrite(pod, template.get("merge") or {}),
            "volumeClaimTemplates": _volume_claims(values),
        },
    }
    return merge_overwrite(statefulset, values.get("statefulSet", {}).get("merge") or {})


# Fragments nats_statefulset places; the other `merge`s under config are NATS configuration.
_MODELLED_MERGES = frozenset(
    {
        "statefulSet.merge",
        "podTemplate.merge",
        "container.merge",
        "config.jetstream.fileStore.pvc.merge",
    }
)
_KUBERNETES_UNDER_CONFIG = (
    "config.jetstream.fileStore.pvc.",
    "config.resolver.pvc.",
    "config.websocket.ingress.",
)


def _fragments(node: Any, path: str = "") -> list[str]:
    """Dotted paths of the non-empty `merge` and `patch` values."""
    if not isinstance(node, dict):
        return []
    found = [f"{path}{k}" for k in ("merge", "patch") if node.get(k)]
    for key, value in node.items():
        if key not in ("merge", "patch"):
            found += _fragments(value, f"{path}{key}.")
    return found


def unmodelled_fragments(values: dict[str, Any]) -> list[str]:
    """Kubernetes fragments in `values` that kubernetes_objects leaves out (so unvalidated)."""
    return [
        where
        for where in _fragments(values)
        if where not in _MODELLED_MERGES
        and not (where.startswith("config.") and not where.startswith(_KUBERNETES_UNDER_CONFIG))
    ]


def kubernetes_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [nats_statefulset(values), *values.get("extraResources", [])]


# --------------------------------------------------------------------------- tests


def test_vendored_defaults_are_the_charts_own_file() -> None:
    digest = hashlib.sha256((CHART / "values.yaml").read_bytes()).hexdigest()
    assert f"`{digest}`" in (CHART / "SOURCE.md").read_text(encoding="utf-8")
    assert chart_defaults()["container"]["image"]["tag"] == "2.11.10-alpine"


def test_deploy_names_the_chart_version_the_defaults_are_from() -> None:
    named = {
        path.name: re.findall(r"--version (\S+)", path.read_text(encoding="utf-8"))
        for path in [DEPLOY / "README.md", *VALUES_FILES]
    }
    assert named["README.md"], "deploy/README.md names no chart version"
    assert len(VALUES_FILES) == 1 + len(REGIONS)
    for name, versions in named.items():
        assert versions, f"{name} names no chart version"
        assert set(versions) == {CHART_VERSION}, (name, versions)


@pytest.mark.parametrize("path", VALUES_FILES, ids=lambda p: p.name)
def test_values_file_uses_only_values_the_chart_has(path: Path) -> None:
    problems = all_problems(_load(path))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("region", REGIONS)
def test_region_values_use_only_values_the_chart_has(region: str) -> None:
    problems = all_problems(region_values(region))
    assert not problems, f"common + {region}:\n" + "\n".join(problems)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("region", REGIONS)
def test_kubernetes_fragments_in_the_values_match_the_schemas(region: str, version: str) -> None:
    objects = kubernetes_objects(region_values(region))
    assert len(objects) == 4  # the StatefulSet and one gateway Service per server
    errors = [e for obj in objects for e in schema_errors(obj, version)]
    assert not errors, f"common + {region} against Kubernetes {version}:\n" + "\n".join(errors)


@pytest.mark.parametrize("region", REGIONS)
def test_every_kubernetes_fragment_in_the_values_is_validated(region: str) -> None:
    values = region_values(region)
    assert unmodelled_fragments(values) == [], "extend nats_statefulset to place them"
    assert unmodelled_fragments({**values, "service": {"merge": {"spec": {}}}}) == ["service.merge"]
    assert unmodelled_fragments({"config": {"merge": {"a": 1}, "cluster": {"patch": [{}]}}}) == []


# --------------------------------------------------------------------------- the check itself


def _broken(tmp_path: Path, name: str, old: str, new: str) -> dict[str, Any]:
    """us-east's values, read from copies under tmp_path with one line of file `name` changed."""
    for path in (HELM / "nats-common.values.yaml", HELM / "nats-us-east.values.yaml"):
        text = path.read_text(encoding="utf-8")
        if path.name == name:
            assert text.count(old) == 1, old
            text = text.replace(old, new)
        (tmp_path / path.name).write_text(text, encoding="utf-8")
    merged: dict[str, Any] = merge_values(
        _load(tmp_path / "nats-common.values.yaml"), _load(tmp_path / "nats-us-east.values.yaml")
    )
    return merged


def test_a_misspelt_or_mistyped_value_is_reported(tmp_path: Path) -> None:
    common = "nats-common.values.yaml"
    typo = _broken(
        tmp_path, common, "  jetstream:\n    enabled: true", "  jetStream:\n    enabled: true"
    )
    assert all_problems(typo) == ["config.jetStream: the chart 1.3.16 has no such value"]
    text = _broken(tmp_path, common, "    replicas: 3\n", "    replicas: three\n")
    assert all_problems(text) == [
        "config.cluster.replicas: 'three' is not int like the chart's default"
    ]
    env = _broken(tmp_path, common, "GOMEMLIMIT: 3GiB", "GOMEMLIMIT: 3")
    assert all_problems(env) == [
        "container.env.GOMEMLIMIT: an env value must be a string or a map (or the chart fails)"
    ]


def test_a_broken_kubernetes_fragment_is_reported(tmp_path: Path) -> None:
    common = "nats-common.values.yaml"
    values = _broken(tmp_path, common, "        start: 1\n", "        start: first\n")
    assert schema_errors(nats_statefulset(values), VERSIONS[0]) == [
        "StatefulSet nats/nats: spec.ordinals.start: 'first' is not of type 'integer', 'null'"
    ]
    grace = "      terminationGracePeriodSeconds: 60\n"
    values = _broken(tmp_path, common, grace, grace.replace("Seconds", "Secs"))
    (error,) = schema_errors(nats_statefulset(values), VERSIONS[0])
    assert error.startswith("StatefulSet nats/nats: spec.template.spec: Additional properties")
    assert "'terminationGracePeriodSecs' was unexpected" in error
    values = _broken(
        tmp_path,
        "nats-us-east.values.yaml",
        "name: nats-gateway-1\n",
        "name: nats-gateway-1\n      uid: 7\n",
    )
    errors = [e for obj in kubernetes_objects(values) for e in schema_errors(obj, VERSIONS[0])]
    assert errors == [
        "Service nats/nats-gateway-1: metadata.uid: 7 is not of type 'string', 'null'"
    ]
