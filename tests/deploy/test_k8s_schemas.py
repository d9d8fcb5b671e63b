"""Every object `kubectl kustomize deploy/k8s/overlays/<region>` renders is valid Kubernetes.

Validated offline against the strict API schemas of the versions deploy/README.md names
(tests/deploy/k8s_schema.py): field names, types, required fields and enums. Not checked,
since only an API server knows them: admission rules (e.g. a selector matching its template,
immutable fields), defaults, and whether referenced Secrets, images or classes exist.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.deploy.k8s_schema import schema_errors, supported_versions, validated_versions
from tests.deploy.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
REGIONS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
VERSIONS = validated_versions()


def test_readme_names_versions_the_validator_has_schemas_for() -> None:
    assert REGIONS == ["ap-south", "eu-west", "us-east"]
    assert set(VERSIONS) <= set(supported_versions()), supported_versions()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("region", REGIONS)
def test_rendered_overlay_objects_match_the_kubernetes_schemas(region: str, version: str) -> None:
    objects = render(K8S / "overlays" / region)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "StatefulSet", "CronJob", "Service", "ConfigMap"} <= kinds, kinds
    errors = [e for obj in objects for e in schema_errors(obj, version)]
    assert not errors, f"overlays/{region} against Kubernetes {version}:\n" + "\n".join(errors)


# --------------------------------------------------------------------------- the check itself


def _broken_copy(tmp_path: Path, edit: str, new: str) -> Path:
    """deploy/k8s copied under tmp_path with one line of base/bridge.yaml replaced."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    bridge = copy / "base" / "bridge.yaml"
    text = bridge.read_text(encoding="utf-8")
    assert text.count(edit) == 1, edit
    bridge.write_text(text.replace(edit, new), encoding="utf-8")
    return copy / "overlays" / "us-east"


def _bridge_errors(overlay: Path) -> list[str]:
    objects = render(overlay)
    (bridge,) = [o for o in objects if o["kind"] == "StatefulSet"]
    return schema_errors(bridge, VERSIONS[0])


def _bridge_line(pattern: str) -> str:
    """The one line of base/bridge.yaml that contains `pattern`."""
    lines = (K8S / "base" / "bridge.yaml").read_text(encoding="utf-8").splitlines()
    (line,) = [x for x in lines if pattern in x]
    return line


def test_a_wrong_field_type_is_reported_with_its_object_and_field(tmp_path: Path) -> None:
    line = _bridge_line("terminationGracePeriodSeconds:")
    overlay = _broken_copy(tmp_path, line, line.split(":")[0] + ": sixty")
    (error,) = _bridge_errors(overlay)
    assert error.startswith("StatefulSet xregion/xregion-bridge: ")
    assert "spec.template.spec.terminationGracePeriodSeconds: 'sixty' is not of type" in error


def test_an_unknown_field_is_reported(tmp_path: Path) -> None:
    line = _bridge_line("readOnlyRootFilesystem:")
    typo = line.replace("readOnlyRootFilesystem", "readOnlyRootFileSystem")
    (error,) = _bridge_errors(_broken_copy(tmp_path, line, typo))
    assert "securityContext: Additional properties are not allowed" in error
    assert "'readOnlyRootFileSystem' was unexpected" in error


def test_a_missing_required_field_and_an_unknown_kind_are_reported() -> None:
    (doc,) = yaml.safe_load_all((K8S / "base" / "namespace.yaml").read_text(encoding="utf-8"))
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    service["spec"] = {"ports": [{"name": "http"}]}  # no port number
    assert schema_errors(doc, VERSIONS[0]) == []
    assert schema_errors(service, VERSIONS[0]) == [
        "Service s: spec.ports[0]: 'port' is a required property"
    ]
    assert schema_errors({**doc, "apiVersion": "v2"}, VERSIONS[0]) == [
        f"Namespace xregion: Kubernetes {VERSIONS[0]} has no Namespace in v2"
    ]
