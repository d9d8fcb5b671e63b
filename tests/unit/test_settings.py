"""The region file: loading, environment overrides, validation errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import ConfigError, load_settings, redacted_dump

REGION_FILES = Path(__file__).resolve().parents[2] / "deploy" / "regions"

VALID = """
region = "us-east"
regions = ["us-east", "eu-west", "ap-south"]
data_dir = "/tmp/xr"

[nats]
servers = ["nats://127.0.0.1:4222"]

[bridge]
listen = "127.0.0.1:8080"

[signing]
mode = "off"

[services.catalog]
upstream = "http://127.0.0.1:7001/"
routes = ["/catalog"]
targets = ["eu-west"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "region.toml"
    path.write_text(text)
    return path


def test_valid_file_loads_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, VALID), env={})
    assert settings.region == "us-east"
    assert settings.peer_regions() == ["eu-west", "ap-south"]
    assert settings.bridge.max_replicated_body_bytes == 8 * 1024 * 1024
    assert settings.replayer.concurrency == 64
    catalog = settings.services["catalog"]
    assert catalog.upstream == "http://127.0.0.1:7001"
    assert catalog.replicate == ["POST", "PUT", "PATCH", "DELETE"]
    assert catalog.targets == ["eu-west"]


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XR_NATS__SERVERS", "nats://10.0.0.1:4222,nats://10.0.0.2:4222")
    monkeypatch.setenv("XR_BRIDGE__LISTEN", "127.0.0.1:18080")
    monkeypatch.setenv("XR_SERVICES__CATALOG__ALLOW_REQUEST_TARGETS", "true")
    settings = load_settings(write(tmp_path, VALID))
    assert settings.nats.servers == ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert settings.bridge.listen == "127.0.0.1:18080"
    assert settings.services["catalog"].allow_request_targets is True
    assert settings.services["catalog"].routes == ["/catalog"]  # merged, not replaced


def test_json_list_in_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XR_REGIONS", '["us-east", "eu-west"]')
    settings = load_settings(write(tmp_path, VALID.replace('targets = ["eu-west"]', "")))
    assert settings.regions == ["us-east", "eu-west"]


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    assert load_settings(None, env={"XR_CONFIG": str(path)}).region == "us-east"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("[bridge]", "[bridge]\nlisen = 'x'"), "bridge.lisen: unknown key"),
        (('region = "us-east"\n', ""), "region: required key is missing"),
        (('region = "us-east"', 'region = "US_East"'), "region: invalid region"),
        (('region = "us-east"', 'region = "mars"'), "region 'mars' is not listed"),
        (('mode = "off"', 'mode = "maybe"'), "signing.mode: Input should be 'ed25519' or 'off'"),
        (('mode = "off"', 'mode = "ed25519"'), "signing: key_id is required"),
        (('listen = "127.0.0.1:8080"', 'listen = "8080"'), "bridge.listen: expected host:port"),
        (('"nats://127.0.0.1:4222"', '"http://x"'), "nats.servers: expected nats://"),
        (('targets = ["eu-west"]', 'targets = ["moon"]'), "targets names unknown regions"),
        (('upstream = "http://', 'upstream = "ftp://'), "services.catalog.upstream"),
        (('routes = ["/catalog"]', 'routes = ["catalog"]'), "must be a path prefix"),
        (("[services.catalog]", "[services.Bad_Name]"), "invalid service name"),
        (("[signing]", "[signing]\n[signing]"), "invalid TOML"),
    ],
)
def test_invalid_file_gives_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    assert change[0] in VALID, "the test's replacement must apply"
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, VALID.replace(change[0], change[1], 1)), env={})
    message = str(info.value)
    assert "\n" not in message
    assert expected in message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(tmp_path / "absent.toml", env={})


def test_bad_environment_value_names_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XR_REPLAYER__CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match=r"replayer\.concurrency"):
        load_settings(write(tmp_path, VALID))


def test_redacted_dump_hides_secrets(tmp_path: Path) -> None:
    text = VALID.replace(
        'servers = ["nats://127.0.0.1:4222"]',
        'servers = ["nats://bob:hunter2@127.0.0.1:4222"]\npassword = "s3cret"',
    )
    dump = redacted_dump(load_settings(write(tmp_path, text), env={}))
    flat = repr(dump)
    assert "hunter2" not in flat
    assert "s3cret" not in flat
    assert dump["nats"]["password"] == "***"
    assert dump["nats"]["servers"] == ["nats://***@127.0.0.1:4222"]


@pytest.mark.parametrize("path", sorted(REGION_FILES.glob("*.toml")), ids=lambda p: p.name)
def test_example_region_files_are_valid(path: Path) -> None:
    settings = load_settings(path, env={})
    assert path.stem == settings.region


def test_there_are_example_region_files() -> None:
    assert len(list(REGION_FILES.glob("*.toml"))) == 3


def test_signing_key_must_name_the_region(tmp_path: Path) -> None:
    text = VALID.replace(
        'mode = "off"',
        'mode = "ed25519"\nkey_id = "eu-west-1"\nprivate_key_file = "k.pem"\n'
        'trusted_keys_file = "t.toml"',
    )
    with pytest.raises(ConfigError, match=r"signing\.key_id 'eu-west-1' does not name region"):
        load_settings(write(tmp_path, text), env={})
