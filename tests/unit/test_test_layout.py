"""The layout of `tests/` itself, read with ast (nothing is imported).

No test module imports another test module: a helper two tests share lives in `tests/harness/`
(used across packages) or in the package's `helpers.py` / `conftest.py`. Importing a test
module also imports its tests, fixtures and marks into the importer, where pytest collects
them a second time. Every directory of Python files under `tests/` is a package, so two
modules of the same name in two directories never clash.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"


def _python_files() -> list[Path]:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def _package_of(module: str, is_package: bool) -> list[str]:
    parts = module.split(".")
    return parts if is_package else parts[:-1]


def _imported(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module name `source` (the module `module`) may import, at any depth; relative
    imports resolved. `from pkg import name` yields both `pkg` and `pkg.name`, since `name`
    may be a submodule."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _package_of(module, is_package)
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            yield prefix
            yield from (f"{prefix}.{alias.name}" for alias in node.names)


def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last.endswith("_test")


def imported_test_modules(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The test modules that `source` imports (pytest collects `test_*.py` and `*_test.py`)."""
    return sorted(
        {name for name in _imported(source, module, is_package=is_package) if _is_test_module(name)}
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@pytest.mark.parametrize(
    ("source", "found"),
    [
        (
            "from tests.replayer.test_replayer_apply import count",
            ["tests.replayer.test_replayer_apply"],
        ),
        ("from tests.replayer import test_replayer_apply", ["tests.replayer.test_replayer_apply"]),
        ("import tests.bridge.test_publisher as p", ["tests.bridge.test_publisher"]),
        (
            "from .test_replayer_process import region_toml",
            ["tests.replayer.test_replayer_process"],
        ),
        ("from . import test_outbox", ["tests.replayer.test_outbox"]),
        ("from ..bridge.test_x import y", ["tests.bridge.test_x"]),
        ("def f():\n    from tests.unit.fuzz_test import g", ["tests.unit.fuzz_test"]),
        ("from tests.replayer.helpers import count, dead_letters", []),
        ("from tests.harness.wait import wait_until\nimport pytest", []),
    ],
)
def test_the_check_finds_every_form_of_importing_a_test_module(
    source: str, found: list[str]
) -> None:
    assert imported_test_modules(source, "tests.replayer.test_here") == found


def test_no_test_module_imports_another_test_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): names
        for path in _python_files()
        if (
            names := imported_test_modules(
                path.read_text(encoding="utf-8"),
                _module_name(path),
                is_package=path.name == "__init__.py",
            )
        )
    }
    assert offenders == {}, (
        f"move the shared helpers to tests/harness/ or the package's helpers.py: {offenders}"
    )


def test_every_directory_of_python_files_under_tests_is_a_package() -> None:
    directories = {path.parent for path in _python_files()}
    missing = sorted(
        str(d.relative_to(ROOT)) for d in directories if not (d / "__init__.py").exists()
    )
    assert missing == []
