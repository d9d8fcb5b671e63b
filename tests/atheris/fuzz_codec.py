"""Coverage-guided fuzzing (atheris, libFuzzer) of the event decoder and the replayer's
request building, for longer runs than the hypothesis tests (tests/unit/test_fuzz_*.py).

atheris is not a dependency of the project; it installs from PyPI for Python 3.11::

    python3.11 -m venv /tmp/fuzz && /tmp/fuzz/bin/pip install atheris
    PYTHONPATH=.:.venv/lib/python3.11/site-packages \\
        /tmp/fuzz/bin/python tests/atheris/fuzz_codec.py -max_total_time=60

A crash (an exception other than the codec's own errors, or a call outside the base URL) is
written to `crash-*` and reported by libFuzzer.
"""

from __future__ import annotations

import sys

import atheris  # type: ignore[import-untyped]

with atheris.instrument_imports():
    from yarl import URL

    from services.replayer.request import HOP_BY_HOP, RequestError, build_request
    from shared.envelope import MalformedEventError, decode
    from shared.settings import ServiceSettings

BASE = "http://catalog.internal:8080/api"
SERVICES = {"catalog": ServiceSettings(upstream=BASE, routes=["/"], replicate=["PUT", "POST"])}
FIELDS = ["Xr-Event-Id", "Xr-Origin", "Xr-Service", "Xr-Method", "Xr-Path", "Xr-Hlc", "Xr-Key",
          "Xr-Trace", "Xr-Schema", "Xr-Targets", "Xr-Rule", "Xr-Sig", "Nats-Msg-Id"]  # fmt: skip
VALID = {
    "Xr-Event-Id": "0190b6a4-3b4c-7d2e-8f00-123456789abc", "Xr-Origin": "us-east",
    "Xr-Service": "catalog", "Xr-Method": "PUT", "Xr-Path": "/catalog/1", "Xr-Key": "/catalog/1",
    "Xr-Hlc": "001700000000000-000000", "Xr-Schema": "1",
    "Xr-Trace": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}  # fmt: skip


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    headers = dict(VALID)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]
        if fdp.ConsumeBool():
            name = "Xr-Req-" + fdp.ConsumeUnicodeNoSurrogates(8)
        headers[name] = fdp.ConsumeUnicodeNoSurrogates(40)
    try:
        event = decode(headers, fdp.ConsumeBytes(32))
    except MalformedEventError:
        return
    try:
        call = build_request(event, SERVICES)
    except RequestError:
        return
    url, base = URL(call.url, encoded=True), URL(BASE)
    if (url.host, url.port) != (base.host, base.port) or not url.path.startswith("/api/"):
        raise AssertionError(f"{event.path!r} became {call.url!r}")
    if {n.lower() for n in call.headers} & (HOP_BY_HOP - {"xr-replayed-from"}):
        raise AssertionError(f"hop-by-hop header forwarded: {call.headers}")


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
