"""Kubernetes objects checked against the API's OpenAPI schemas, offline.

The schemas are the JSON Schema form of each release's OpenAPI document that the
`kubernetes-validate` package bundles (its `vX.Y.0-local-strict` sets). Strict: a field the
API does not define is an error, as `kubectl apply --validate=strict` would report it.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
from referencing import Registry, Resource

__all__ = ["README", "schema_errors", "supported_versions", "validated_versions"]

README = Path(__file__).resolve().parents[2] / "deploy" / "README.md"
# The sentence of deploy/README.md that names the versions; the tests read it from there.
_VERSIONS_RE = re.compile(r"against the API schemas of Kubernetes (\d+\.\d+) and (\d+\.\d+)")
_MINIMUM_RE = re.compile(r"Kubernetes needs to be (\d+\.\d+) or newer")


def validated_versions() -> tuple[str, ...]:
    """The Kubernetes versions deploy/README.md says the manifests are validated against."""
    text = " ".join(README.read_text(encoding="utf-8").split())
    found = _VERSIONS_RE.search(text)
    assert found, f"{README} names no Kubernetes versions to validate against"
    minimum = _MINIMUM_RE.search(text)
    assert minimum, f"{README} names no minimum Kubernetes version"
    assert found.group(1) == minimum.group(1), "validate against the oldest version supported"
    return found.groups()


def _schema_root() -> Path:
    return Path(str(resources.files("kubernetes_validate") / "kubernetes-json-schema"))


def supported_versions() -> list[str]:
    """Kubernetes versions (major.minor) the installed package has strict schemas for."""
    names = (p.name for p in _schema_root().iterdir())
    found = [m.group(1) for n in names if (m := re.fullmatch(r"v(\d+\.\d+)\.0-local-strict", n))]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")))


@functools.cache
def _schema_dir(version: str) -> Path:
    directory = _schema_root() / f"v{version}.0-local-strict"
    have = supported_versions()
    assert directory.is_dir(), f"kubernetes-validate has no Kubernetes {version} schemas: {have}"
    return directory


@functools.cache
def _registry(version: str) -> Registry[Any]:
    text = (_schema_dir(version) / "_definitions.json").read_text(encoding="utf-8")
    definitions: Resource[Any] = Resource.from_contents(json.loads(text))
    return definitions @ Registry()


@functools.cache
def _validator(version: str, api_version: str, kind: str) -> Any:
    # The package's file naming: apps/v1 -> apps-v1, policy/v1 -> policy-v1, v1 -> v1.
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_dir(version) / f"{kind.lower()}-{group_version}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema, registry=_registry(version))


def _field(path: Iterable[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(the object)"


def _name(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    where = f"{metadata['namespace']}/" if metadata.get("namespace") else ""
    return f"{obj.get('kind')} {where}{metadata.get('name')}"


def schema_errors(obj: Mapping[str, Any], version: str) -> list[str]:
    """`Kind ns/name: field.path: message` for each way `obj` breaks the Kubernetes schema."""
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [f"{_name(obj)}: no apiVersion or kind"]
    validator = _validator(version, api_version, kind)
    if validator is None:
        return [f"{_name(obj)}: Kubernetes {version} has no {kind} in {api_version}"]
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_name(obj)}: {_field(e.absolute_path)}: {e.message}" for e in errors]
