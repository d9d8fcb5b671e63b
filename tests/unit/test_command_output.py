"""The pure pieces of the operator commands' output: JSON values, the uncut table console, the
JSON of `status` paths, `pause` switches, `top` frames and `trace` steps."""

from __future__ import annotations

import datetime as dt
import io
import json
import math

import pytest
from rich.console import Console

from services.xregion import cli
from services.xregion.errors import UsageError
from services.xregion.ops import output
from services.xregion.ops.dashboard import Frame, HealthRow, PathRow, RegionRow
from services.xregion.ops.pause import PathSwitch, all_paths, paths_into
from services.xregion.ops.status import (
    PathStatus,
    StatusRow,
    path_statuses,
    status_json,
    status_tables,
)
from services.xregion.ops.trace import Step, Trace
from shared.pause import PauseInfo

AT = dt.datetime(2026, 12, 2, 13, 29, 46, 123456, tzinfo=dt.UTC)


def test_json_values_are_machine_friendly() -> None:
    assert output.iso_utc(AT) == "2026-12-02T13:29:46.123Z"
    cet = dt.timezone(dt.timedelta(hours=1))
    assert output.iso_utc(dt.datetime(2026, 12, 2, 14, 0, tzinfo=cet)) == (
        "2026-12-02T13:00:00.000Z"
    )
    assert output.iso_utc(None) is None
    assert output.iso_utc_text("2026-12-02T13:29:46+00:00") == "2026-12-02T13:29:46.000Z"
    assert output.iso_utc_text("2026-12-02T13:29:46.5Z") == "2026-12-02T13:29:46.500Z"
    assert output.iso_utc_text("?") is None
    assert output.number(0.12345678) == 0.123457
    assert output.number(math.inf) is None
    assert output.number(math.nan) is None
    assert output.count(12.0) == 12
    assert isinstance(output.count(12.0), int)
    assert output.count(None) is None


def test_print_json_is_one_document_without_nan(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_json({"b": 1, "a": "é"})
    text = capsys.readouterr().out
    assert text.endswith("}\n")
    assert list(json.loads(text)) == ["b", "a"]  # keys in the order given
    assert "é" in text
    with pytest.raises(ValueError, match="JSON compliant"):
        output.print_json({"x": math.nan})


def test_table_console_off_a_terminal_never_cuts_a_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")  # narrower than the table: rich would cut it to fit
    monkeypatch.setattr("sys.stdout", io.StringIO())  # not a terminal
    console = output.table_console()
    assert not console.is_terminal
    assert console.color_system is None
    with console.capture() as captured:
        console.print(status_tables([_row()], [_path("paused", backlog=1234)]))
    text = captured.get()
    assert "…" not in text
    for cell in ("instance", "admin", "http://127.0.0.1:14411", "NODEIDNODEIDNODEID0123", "1,234"):
        assert cell in text, text
    widest = max(len(line) for line in text.splitlines())
    assert 40 < widest < 200  # each table as wide as its cells, not as the console


def test_status_paths_table_says_why_a_switch_is_unknown() -> None:
    unknown = PathStatus(PathSwitch("us-east", "eu-west", error="xr-control-us-east: timed out"))
    console = Console(width=200, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(status_tables([_row()], [unknown, _path("paused", backlog=3)]))
    text = captured.get()
    assert " detail " in text
    assert "│ unknown │" in text
    assert "xr-control-us-east: timed out" in text
    with console.capture() as captured:
        console.print(status_tables([_row()], [_path("paused", backlog=3)]))
    assert " detail " not in captured.get()  # no column for no errors


def test_a_narrow_console_is_what_cut_the_table() -> None:
    console = Console(width=40, color_system=None, file=io.StringIO())
    with console.capture() as captured:
        console.print(status_tables([_row()], []))
    assert "…" in captured.get()


def test_pause_switch_lines_and_json() -> None:
    running = PathSwitch("us-east", "eu-west")
    paused = PathSwitch("us-east", "ap-south", PauseInfo("2026-12-02T13:29:46+00:00", "op@h"))
    unknown = PathSwitch("eu-west", "us-east", error="xr-control-eu-west: cannot read")
    failed = PathSwitch("ap-south", "us-east", failed="cannot write pause.us-east")
    assert running.line() == "us-east -> eu-west  running"
    assert paused.line() == "us-east -> ap-south  paused  since 2026-12-02T13:29:46+00:00 by op@h"
    assert unknown.line() == "eu-west -> us-east  UNKNOWN  xr-control-eu-west: cannot read"
    assert paused.as_json() == {
        "origin": "us-east",
        "target": "ap-south",
        "state": "paused",
        "since": "2026-12-02T13:29:46.000Z",
        "by": "op@h",
        "error": None,
    }
    assert unknown.as_json()["state"] == "unknown"
    assert (failed.state, failed.as_json()["error"]) == ("running", "cannot write pause.us-east")
    assert all_paths(["a", "b", "c"]) == [
        ("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b"),
    ]  # fmt: skip


def test_status_joins_switches_with_the_broadcasters_backlog() -> None:
    switches = [PathSwitch("us-east", "eu-west", PauseInfo("x", "op")), PathSwitch("a", "b")]
    frame = [_frame_row("us-east", "eu-west", backlog=42.0, state="paused")]
    first, second = path_statuses(switches, frame)
    assert (first.backlog, first.forwarding) == (42.0, "paused")
    assert (second.backlog, second.forwarding) == (None, None)
    doc = status_json([_row()], [first, second])
    assert list(doc) == ["instances", "paths"]
    assert list(doc["instances"][0]) == [
        "region", "service", "instance", "version", "started", "uptime_s", "health",
        "admin_url", "metadata",
    ]  # fmt: skip
    assert doc["instances"][0]["started"] == "2026-12-02T13:29:46.123Z"
    assert doc["paths"][0] == {
        "origin": "us-east",
        "target": "eu-west",
        "state": "paused",
        "since": None,  # "x" is not a time
        "by": "op",
        "error": None,
        "backlog": 42,
        "forwarding": "paused",
    }


def test_top_frame_json_has_numbers_and_nulls() -> None:
    frame = Frame(
        paths=(_frame_row("us-east", "eu-west", backlog=3.0, state="ok"),),
        regions=(RegionRow("us-east", 5.0, 0.0, 0.5, None, 0.0),),
        health=(HealthRow("us-east", "bridge", "http://127.0.0.1:1", False, None, "timed out"),),
        window_s=1.0004,
    )
    doc = json.loads(json.dumps(frame.as_json(), allow_nan=False))
    assert (doc["window_s"], doc["endpoints_up"], doc["endpoints"]) == (1.0, 0, 1)
    path = doc["paths"][0]
    assert path["lag_p50_s"] == 0.0125
    assert path["canary_age_s"] is None  # inf in the model: JSON has none
    assert (path["backlog"], path["state"], path["lag_source"]) == (3, "ok", "window")
    assert doc["regions"][0] == {
        "region": "us-east",
        "replay_backlog": 5,
        "dlq": 0,
        "upstream_retries_per_s": 0.5,
        "retried_per_s": None,
        "outbox": 0,
        "conflicts": None,
        "repeated": None,
    }
    assert doc["health"][0]["error"] == "timed out"


def test_trace_lines_and_json_agree() -> None:
    trace = Trace("0190-id", since=AT, until=AT + dt.timedelta(seconds=300))
    assert trace.lines()[0].startswith("event 0190-id: not in any region's events stream")
    assert trace.as_json()["found"] is False
    trace.headers = {"Xr-Method": "PUT", "Xr-Path": "/c/1", "Xr-Key": "/c/1", "Xr-Hlc": "h"}
    trace.origin, trace.service = "us-east", "c"
    trace.steps += [
        Step("us-east", "published", "XR_EVENTS_US_EAST seq 7 at …", "XR_EVENTS_US_EAST", 7, AT),
        Step("eu-west", "not_forwarded", "xr-broadcast-eu-west has not acked it", state="pending"),
        Step("eu-west", "dead_lettered", "XR_DLQ_EU_WEST seq 1: http_400: no", reason="http_400"),
    ]
    lines = trace.lines()
    assert lines[0] == "event 0190-id: PUT /c/1 (service c, key /c/1, hlc h)"
    assert lines[2] == "  eu-west      not forwarded   xr-broadcast-eu-west has not acked it"
    assert lines[3].startswith("  eu-west      dead-lettered   XR_DLQ_EU_WEST seq 1")
    doc = trace.as_json()
    assert (doc["found"], doc["origin"], doc["method"], doc["hlc"]) == (True, "us-east", "PUT", "h")
    assert doc["searched"] == {"from": "2026-12-02T13:29:46.123Z", "to": "2026-12-02T13:34:46.123Z"}
    assert [set(step) for step in doc["steps"]] == [set(STEP_KEYS)] * 3
    assert doc["steps"][0]["at"] == "2026-12-02T13:29:46.123Z"
    assert doc["steps"][1]["state"] == "pending"


STEP_KEYS = ("region", "step", "stream", "seq", "at", "after_s", "state", "reason", "detail")


def _row() -> StatusRow:
    return StatusRow(
        region="us-east",
        service="broadcaster",
        instance="NODEIDNODEIDNODEID0123",
        version="0.1.0",
        uptime_s=12.5,
        health="ok",
        admin_url="http://127.0.0.1:14411",
        metadata={"region": "us-east"},
        started=AT,
    )


def _path(state: str, backlog: float | None) -> PathStatus:
    info = PauseInfo("2026-12-02T13:29:46+00:00", "operator@a-long-host-name") if state else None
    return PathStatus(PathSwitch("us-east", "eu-west", info), backlog, "paused")


def _frame_row(origin: str, target: str, *, backlog: float, state: str) -> PathRow:
    return PathRow(
        origin=origin,
        target=target,
        forwarded_per_s=2.0,
        applied_per_s=None,
        applied_total=None,
        lag_p50_s=0.0125,
        lag_p99_s=0.05,
        lag_source="window",
        canary_age_s=math.inf,
        backlog=backlog,
        state=state,
    )


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    return capsys.readouterr().out


def _keys(doc: dict[str, object]) -> set[str]:
    """Every key of a JSON document, nested ones included (not those of `metadata`)."""
    found = set(doc)
    for key, value in doc.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, dict) and key != "metadata":
                found |= _keys(item)
    return found


def test_every_json_key_is_documented_in_the_commands_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    trace = Trace("id", since=AT, until=AT, headers={}, steps=[Step("r", "version", "x")])
    frame = Frame(
        paths=(_frame_row("a", "b", backlog=1, state="ok"),),
        regions=(RegionRow("a", 0, 0, 0, 0, 0),),
        health=(HealthRow("a", "bridge", "u", True, "ok", None),),
        window_s=1.0,
    )
    documents = {
        "status": status_json([_row()], [_path("paused", 1)]),
        "top": {"at": None, **frame.as_json()},
        "trace": trace.as_json(),
        "pause": {"paths": [PathSwitch("a", "b").as_json()]},
        "provision": {"region": 1, "replicas": 1, "assets": [dict.fromkeys(PROVISION_KEYS)]},
        "dlq": {"region": 1, "stream": 1, "dead_letters": [dict.fromkeys(DLQ_KEYS)]},
    }
    for command, doc in documents.items():
        text = _help(command, capsys)
        assert "--output {table,json}" in text, command
        missing = {key for key in _keys(doc) if f'"{key}"' not in text}
        assert not missing, (command, missing)


PROVISION_KEYS = ("kind", "name", "action", "note")
DLQ_KEYS = (
    "seq", "stored", "at", "origin", "service", "reason", "status", "attempts", "event_id",
    "target", "error",
)  # fmt: skip


def test_pause_paths_into_a_target_and_usage_errors() -> None:
    regions = ["us-east", "eu-west", "ap-south"]
    assert paths_into(regions, "eu-west") == [("us-east", "eu-west"), ("ap-south", "eu-west")]
    assert paths_into(regions, "eu-west", "ap-south") == [("ap-south", "eu-west")]
    for target, origin in (("mars", None), ("eu-west", "eu-west"), ("eu-west", "mars")):
        with pytest.raises(UsageError):
            paths_into(regions, target, origin)
