"""Shared pytest configuration: the harness fixtures (tests/harness/fixtures.py)."""

pytest_plugins = ["tests.harness.fixtures"]
