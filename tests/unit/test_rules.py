"""Replication rules (replace / apply): how they are configured, carried, signed and keyed."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.bridge.event import WriteRequest, build_event, create_key
from services.bridge.routing import Route
from services.replayer.partitions import KeyedRunner, commutes
from shared.envelope import (
    HDR_RULE,
    Event,
    MalformedEventError,
    decode,
    default_rule,
    encode,
    signing_input,
)
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.settings import ConfigError, ServiceSettings, load_settings, redacted_dump
from shared.signing import SignatureError, Signer, Verifier
from tests.harness.wait import wait_until

REGION_FILE = """
region = "us-east"
regions = ["us-east", "eu-west"]
data_dir = "/tmp/xr"

[nats]
servers = ["nats://127.0.0.1:4222"]

[signing]
mode = "off"

[services.shop]
upstream = "http://127.0.0.1:7001"
routes = ["/items"]
{extra}
"""


def load(tmp_path: Path, extra: str = "") -> ServiceSettings:
    path = tmp_path / "region.toml"
    path.write_text(REGION_FILE.format(extra=extra))
    return load_settings(path, env={}).services["shop"]


def event(**changes: object) -> Event:
    base = Event(
        event_id=uuid7_str(),
        origin="us-east",
        service="shop",
        method="POST",
        path="/items",
        hlc=HlcStamp(1_700_000_000_000, 0),
        key="/items",
        body=b'{"id": "7"}',
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        rule="apply",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_defaults_follow_http_semantics(tmp_path: Path) -> None:
    service = load(tmp_path)
    assert service.effective_rules() == {
        "POST": "apply", "PUT": "replace", "PATCH": "apply", "DELETE": "replace",
    }  # fmt: skip
    assert default_rule("GET") == "apply"


def test_service_and_route_overrides(tmp_path: Path) -> None:
    service = load(
        tmp_path,
        'rules = { patch = "replace" }\nroute_rules = { "/items/counters" = { POST = "replace" } }',
    )
    assert service.rule_for("PATCH", "/items/7") == "replace"
    assert service.rule_for("POST", "/items") == "apply"
    assert service.rule_for("POST", "/items/counters") == "replace"
    assert service.rule_for("POST", "/items/counters/x") == "replace"
    assert service.rule_for("POST", "/items/countersx") == "apply"  # segment boundary


def test_check_config_shows_the_effective_rules(tmp_path: Path) -> None:
    path = tmp_path / "region.toml"
    path.write_text(REGION_FILE.format(extra='rules = { POST = "replace" }'))
    dumped = redacted_dump(load_settings(path, env={}))
    assert dumped["services"]["shop"]["rules"]["POST"] == "replace"
    assert dumped["services"]["shop"]["rules"]["PATCH"] == "apply"


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('rules = { POST = "merge" }', "services.shop.rules.POST"),
        ('rules = { "P T" = "apply" }', "services.shop.rules"),
        ('route_rules = { "items" = { POST = "apply" } }', "services.shop.route_rules"),
        ('create_key = "id"', "services.shop.create_key"),
    ],
)
def test_bad_rules_name_their_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(tmp_path, extra)


def test_rule_is_carried_and_signed() -> None:
    headers, payload = encode(event())
    assert headers[HDR_RULE] == "apply"
    assert decode(headers, payload).rule == "apply"
    assert b"\nrule=apply\n" in signing_input(event())
    with pytest.raises(MalformedEventError, match=HDR_RULE):
        event(rule="merge")


def test_stripping_or_changing_the_rule_breaks_the_signature() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Signer("us-east-1", key)
    verifier = Verifier({"us-east-1": key.public_key()})
    signed = signer.sign(event())
    verifier.verify(signed)
    for forged in (
        dataclasses.replace(signed, rule=None),
        dataclasses.replace(signed, rule="replace"),
    ):
        with pytest.raises(SignatureError):
            verifier.verify(forged)


def test_an_event_without_a_rule_takes_its_methods() -> None:
    assert event(rule=None).effective_rule == "apply"
    assert event(rule=None, method="PUT").effective_rule == "replace"
    headers, payload = encode(event(rule=None))
    assert HDR_RULE not in headers
    assert decode(headers, payload).effective_rule == "apply"


def test_the_bridge_stamps_rule_and_create_key(tmp_path: Path) -> None:
    route = Route.from_settings("shop", load(tmp_path, 'create_key = "json:id"'))

    def built(method: str, path: str, body: bytes) -> Event:
        request = WriteRequest(method, path, path, (("content-type", "application/json"),), body)
        return build_event(
            request, route, event_id=uuid7_str(), origin="us-east",
            hlc=HlcStamp(1_700_000_000_000, 0), forward=frozenset(),
        )  # fmt: skip

    create = built("POST", "/items", b'{"id": "7", "name": "lamp"}')
    assert (create.rule, create.key) == ("apply", "/items/7")
    assert built("POST", "/items", b"not json").key == "/items"
    assert built("PATCH", "/items/7", b"{}").rule == "apply"
    assert built("PUT", "/items/7", b"{}").rule == "replace"
    assert create_key("json:id", "/items/", b'{"id": 12}') == "/items/12"
    assert create_key("json:id", "/items", b'{"id": true}') is None
    assert create_key("json:id", "/items", b'["id"]') is None
    assert create_key("json:id", "/items", b'{"id": "a\\nb"}') is None  # not a valid key
    assert create_key("json:id", "/items", b'{"id": ""}') is None


async def test_creates_of_one_key_run_together_and_other_writes_wait() -> None:
    runner = KeyedRunner()
    log: list[str] = []
    gates = {name: asyncio.Event() for name in ("c1", "c2", "patch")}

    def job(name: str) -> object:
        async def run() -> None:
            log.append(f"start {name}")
            await gates[name].wait() if name in gates else None
            log.append(f"end {name}")

        return run

    runner.submit("k", job("c1"), shared=True)  # type: ignore[arg-type]
    runner.submit("k", job("c2"), shared=True)  # type: ignore[arg-type]
    runner.submit("k", job("patch"))  # type: ignore[arg-type]
    runner.submit("k", job("c3"), shared=True)  # type: ignore[arg-type]
    await wait_until(lambda: {"start c1", "start c2"} <= set(log), 5, message="creates together")
    assert "start patch" not in log
    gates["c1"].set()
    gates["c2"].set()
    await wait_until(lambda: "start patch" in log, 5, message="patch after both creates")
    assert "start c3" not in log  # a later create waits for the patch
    gates["patch"].set()
    assert await runner.wait(5)
    assert log.index("end patch") < log.index("start c3")


def test_which_events_commute() -> None:
    assert commutes({"Xr-Method": "POST", "Xr-Rule": "apply"})
    assert commutes({"Xr-Method": "POST"})  # no rule: POST's default
    assert not commutes({"Xr-Method": "POST", "Xr-Rule": "replace"})
    assert not commutes({"Xr-Method": "PATCH", "Xr-Rule": "apply"})
    assert not commutes(None)
