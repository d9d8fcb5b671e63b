"""The pure part of `xregion top`: Prometheus text -> samples -> frame -> rich text."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from services.xregion.ops.dashboard import Frame, PathRow, build_frame, quantile
from services.xregion.ops.dashboard_view import fmt_duration, render
from services.xregion.ops.deployment import AdminEndpoint
from services.xregion.ops.scrape import MetricsFormatError, Scrape, parse_metrics

REGIONS = ("us-east", "eu-west")
BROADCASTER = AdminEndpoint("us-east", "broadcaster", "http://127.0.0.1:1")
REPLAYER = AdminEndpoint("eu-west", "replayer", "http://127.0.0.1:2")
BRIDGE = AdminEndpoint("us-east", "bridge", "http://127.0.0.1:3")
LAG_BOUNDS = ("0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")


def broadcaster_text(forwarded: float, *, paused: int = 0, backlog: float = 3) -> str:
    return f"""\
# HELP xr_broadcaster_forwarded_total Events handled per path
# TYPE xr_broadcaster_forwarded_total counter
xr_broadcaster_forwarded_total{{origin="us-east",target="eu-west",outcome="forwarded"}} {forwarded}
xr_broadcaster_forwarded_total{{origin="us-east",target="eu-west",outcome="canary"}} 100.0
xr_broadcaster_forwarded_created{{origin="us-east",target="eu-west",outcome="forwarded"}} 1.7e9
# TYPE xr_broadcaster_backlog gauge
xr_broadcaster_backlog{{target="eu-west"}} {backlog}
# TYPE xr_broadcaster_paused gauge
xr_broadcaster_paused{{target="eu-west"}} {paused}
"""


def replayer_text(applied: float, lag: tuple[float, ...], *, retries: float = 0) -> str:
    """`lag`: cumulative counts for LAG_BOUNDS (origin us-east)."""
    buckets = "\n".join(
        f'xr_replayer_lag_seconds_bucket{{le="{le}",origin="us-east"}} {count}'
        for le, count in zip(LAG_BOUNDS, lag, strict=True)
    )
    return f"""\
# TYPE xr_replayer_events_total counter
xr_replayer_events_total{{origin="us-east",service="catalog",outcome="applied"}} {applied}
xr_replayer_events_total{{origin="us-east",service="orders",outcome="applied"}} 1.0
xr_replayer_events_total{{origin="us-east",service="catalog",outcome="retried"}} {retries}
# TYPE xr_replayer_lag_seconds histogram
{buckets}
xr_replayer_lag_seconds_count{{origin="us-east"}} {lag[-1]}
xr_replayer_lag_seconds_sum{{origin="us-east"}} 1.0
# TYPE xr_replayer_upstream_retries_total counter
xr_replayer_upstream_retries_total{{service="catalog"}} {retries * 2}
# TYPE xr_replayer_backlog gauge
xr_replayer_backlog 7.0
# TYPE xr_dlq_messages gauge
xr_dlq_messages 2.0
# TYPE xr_replication_canary_age_seconds gauge
xr_replication_canary_age_seconds{{origin="us-east",target="eu-west"}} 1.5
"""


def scrape(endpoint: AdminEndpoint, at: float, text: str | None, ready: str = "ok") -> Scrape:
    if text is None:
        return Scrape(endpoint, at, error="cannot connect")
    return Scrape(endpoint, at, metrics=parse_metrics(text), ready=ready)


def path(frame: Frame, origin: str, target: str) -> PathRow:
    return next(p for p in frame.paths if (p.origin, p.target) == (origin, target))


def test_parse_drops_created_samples_and_rejects_garbage() -> None:
    samples = parse_metrics(broadcaster_text(5))
    assert {s.name for s in samples} == {
        "xr_broadcaster_forwarded_total",
        "xr_broadcaster_backlog",
        "xr_broadcaster_paused",
    }
    with pytest.raises(MetricsFormatError):
        parse_metrics("this is { not prometheus\n")


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {0.1: 0, 0.2: 10, math.inf: 10}, 0.15),  # interpolated inside (0.1, 0.2]
        (0.5, {0.1: 10, math.inf: 10}, 0.05),  # first bucket: from 0
        (0.99, {0.1: 50, 0.5: 100, math.inf: 100}, 0.1 + 0.4 * (99 - 50) / 50),
        (0.99, {0.1: 1, 1.0: 1, math.inf: 10}, 1.0),  # in +Inf: the highest finite bound
        (0.5, {0.1: 0, math.inf: 0}, None),  # no observations
        (0.5, {0.1: 3}, None),  # no +Inf bucket
    ],
)
def test_quantile_is_prometheus_histogram_quantile(
    q: float, buckets: dict[float, float], expected: float | None
) -> None:
    got = quantile(q, buckets)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


def test_rates_come_from_counter_increases_between_rounds() -> None:
    lag0 = (0, 0, 0, 0, 0, 0)
    before = [
        scrape(BROADCASTER, 10.0, broadcaster_text(100)),
        scrape(REPLAYER, 10.0, replayer_text(50, lag0)),
    ]
    after = [
        scrape(BROADCASTER, 12.0, broadcaster_text(140)),
        scrape(REPLAYER, 12.0, replayer_text(80, lag0, retries=4)),
    ]
    frame = build_frame(REGIONS, before, after)
    row = path(frame, "us-east", "eu-west")
    assert row.forwarded_per_s == pytest.approx(20.0)  # canaries are not counted
    assert row.applied_per_s == pytest.approx(15.0)  # applied of catalog only changed
    assert row.applied_total == 81.0
    assert row.backlog == 3.0
    assert row.canary_age_s == 1.5
    assert row.state == "ok"
    assert frame.window_s == pytest.approx(2.0)
    region = next(r for r in frame.regions if r.region == "eu-west")
    assert (region.replay_backlog, region.dlq) == (7.0, 2.0)
    assert region.retried_per_s == pytest.approx(2.0)
    assert region.upstream_retries_per_s == pytest.approx(4.0)


def test_a_counter_that_went_down_counts_from_zero() -> None:
    before = [scrape(BROADCASTER, 0.0, broadcaster_text(1000))]
    after = [scrape(BROADCASTER, 1.0, broadcaster_text(30))]  # the broadcaster restarted
    assert path(build_frame(REGIONS, before, after), "us-east", "eu-west").forwarded_per_s == 30.0


def test_first_round_has_no_rates_but_has_gauges_and_cumulative_lag() -> None:
    current = [scrape(REPLAYER, 1.0, replayer_text(5, (0, 0, 10, 10, 10, 10)))]
    frame = build_frame(REGIONS, None, current)
    row = path(frame, "us-east", "eu-west")
    assert row.applied_per_s is None
    assert row.applied_total == 6.0
    assert row.lag_source == "cumulative"
    assert row.lag_p50_s == pytest.approx(0.0175)  # halfway through (0.01, 0.025]
    assert frame.window_s is None


def test_lag_uses_the_window_when_events_arrived_in_it() -> None:
    # Long ago: 100 events in (0.05, 0.1]; in the window: 10 more, all in (0.005, 0.01].
    before = [scrape(REPLAYER, 0.0, replayer_text(100, (0, 0, 0, 0, 100, 100)))]
    after = [scrape(REPLAYER, 1.0, replayer_text(110, (0, 10, 10, 10, 110, 110)))]
    row = path(build_frame(REGIONS, before, after), "us-east", "eu-west")
    assert row.lag_source == "window"
    assert row.lag_p50_s == pytest.approx(0.0075)
    assert row.lag_p99_s == pytest.approx(0.005 + 0.005 * 9.9 / 10)


def test_lag_falls_back_to_cumulative_without_new_events() -> None:
    counts = (0, 0, 0, 0, 100, 100)
    before = [scrape(REPLAYER, 0.0, replayer_text(100, counts))]
    after = [scrape(REPLAYER, 1.0, replayer_text(100, counts))]
    row = path(build_frame(REGIONS, before, after), "us-east", "eu-west")
    assert row.lag_source == "cumulative"
    assert row.lag_p50_s == pytest.approx(0.075)


def test_down_endpoints_are_shown_down_and_their_numbers_blank() -> None:
    before = [scrape(BROADCASTER, 0.0, broadcaster_text(1)), scrape(REPLAYER, 0.0, None)]
    after = [scrape(BROADCASTER, 1.0, None), scrape(REPLAYER, 1.0, None)]
    frame = build_frame(REGIONS, before, after)
    row = path(frame, "us-east", "eu-west")
    assert (row.forwarded_per_s, row.applied_per_s, row.lag_p50_s, row.state) == (
        None,
        None,
        None,
        None,
    )
    assert [(h.service, h.up, h.error) for h in frame.health] == [
        ("broadcaster", False, "cannot connect"),
        ("replayer", False, "cannot connect"),
    ]
    assert frame.endpoints_up == 0


def test_paused_path_and_summed_outbox() -> None:
    bridge_b = AdminEndpoint("us-east", "bridge", "http://127.0.0.1:4")
    current = [
        scrape(BROADCASTER, 0.0, broadcaster_text(1, paused=1)),
        scrape(BRIDGE, 0.0, "xr_bridge_outbox_depth 3.0\n"),
        scrape(bridge_b, 0.0, "xr_bridge_outbox_depth 2.0\n"),
    ]
    frame = build_frame(REGIONS, None, current)
    assert path(frame, "us-east", "eu-west").state == "paused"
    assert next(r for r in frame.regions if r.region == "us-east").outbox == 5.0


def test_render_shows_every_panel_and_the_numbers() -> None:
    lag = (0, 10, 10, 10, 10, 10)
    before = [scrape(BROADCASTER, 0.0, broadcaster_text(0)), scrape(REPLAYER, 0.0, None)]
    after = [
        scrape(BROADCASTER, 1.0, broadcaster_text(42)),
        scrape(REPLAYER, 1.0, replayer_text(10, lag), ready="degraded"),
        scrape(BRIDGE, 1.0, None),
    ]
    console = Console(record=True, width=200, color_system=None)
    console.print(render(build_frame(REGIONS, before, after), now=0))
    text = console.export_text()
    for title in ("Replication paths", "Regions", "Health"):
        assert title in text
    line = next(line for line in text.splitlines() if "us-east → eu-west" in line)
    cells = [cell.strip() for cell in line.split("│")]
    assert cells[2:10] == ["42.0", "-", "11", "7.5ms*", "10.0ms*", "1.50s", "3", "ok"]
    assert "down" in text
    assert "degraded" in text
    assert "cannot connect" in text
    assert "2/3 endpoints up" in text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0042, "4.2ms"),
        (0.25, "250ms"),
        (3.456, "3.46s"),
        (75, "1m15s"),
        (7300, "2h01m"),
    ],
)
def test_fmt_duration(seconds: float | None, text: str) -> None:
    assert fmt_duration(seconds) == text
