"""shared/retry.py: the waits of each policy shape, the hook (one count and one log line per
scheduled retry), the bounds, and the test switch."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs
from tenacity import retry_if_exception_type

from shared.retry import RetryPolicy, set_waits, waits_enabled


def retries_counted(component: str, reason: str) -> float:
    labels = {"component": component, "reason": reason}
    return REGISTRY.get_sample_value("xr_retries_total", labels) or 0.0


def test_backoff_grows_to_the_cap_with_equal_jitter_and_resets() -> None:
    retries = RetryPolicy.backoff("test.backoff", base_s=0.1, max_s=2.0).retries()
    delays = [retries.next_delay("failed") for _ in range(10)]
    assert 0.05 <= delays[0] <= 0.1
    assert 0.1 <= delays[1] <= 0.2
    assert all(1.0 <= d <= 2.0 for d in delays[5:])
    retries.reset()
    assert retries.next_delay("failed") <= 0.1


def test_every_scheduled_retry_is_counted_and_logged_once() -> None:
    before = retries_counted("test.hook", "unavailable")
    retries = RetryPolicy.backoff("test.hook", base_s=0.2, max_s=1.0).retries()
    with capture_logs() as logs:
        first = retries.next_delay("unavailable", target="eu-west")
        _ = retries.next_delay("unavailable", target="eu-west")
    assert retries_counted("test.hook", "unavailable") == before + 2
    lines = [e for e in logs if e["event"] == "test.hook_retry"]
    assert [(e["attempt"], e["reason"], e["target"]) for e in lines] == [
        (1, "unavailable", "eu-west"),
        (2, "unavailable", "eu-west"),
    ]
    assert lines[0]["wait_s"] == round(first, 3)


def test_a_fixed_policy_waits_its_delays_in_turn_then_gives_up_uncounted() -> None:
    policy = RetryPolicy.fixed("test.fixed", (1.0, 5.0, 30.0))
    before = retries_counted("test.fixed", "timeout")
    waits = [policy.schedule(n, "timeout") for n in (1, 2, 3, 4)]
    assert waits == [1.0, 5.0, 30.0, None]
    assert retries_counted("test.fixed", "timeout") == before + 3


def test_a_retry_loop_refuses_a_bounded_policy() -> None:
    with pytest.raises(ValueError, match="without attempts"):
        RetryPolicy.fixed("test.bounded", (1.0,)).retries()


def test_the_switch_removes_the_waits_but_not_the_retries() -> None:
    policy = RetryPolicy.backoff("test.switch", base_s=5.0, max_s=60.0)
    before = retries_counted("test.switch", "failed")
    set_waits(False)
    try:
        assert not waits_enabled()
        assert [policy.retries().next_delay("failed") for _ in range(3)] == [0.0, 0.0, 0.0]
        assert policy.delay_s(10) == 0.0
    finally:
        set_waits(True)
    assert retries_counted("test.switch", "failed") == before + 3
    assert 2.5 <= policy.delay_s(1) <= 5.0


class Flaky(Exception):
    pass


async def test_a_call_is_retried_within_its_attempts_and_each_retry_goes_through_the_hook(
    no_retry_waits: None,
) -> None:
    policy = RetryPolicy.jittered(
        "test.call", base_s=10.0, max_s=60.0, jitter_s=1.0, attempts=3, timeout_s=120.0
    )
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        raise Flaky(f"try {calls}")

    retrying = policy.retrying(
        retry=retry_if_exception_type(Flaky),
        describe=lambda state: ("flaky", {"calls": calls}),
        retry_error_callback=lambda state: "gave up",
    )
    before = retries_counted("test.call", "flaky")
    with capture_logs() as logs:
        assert await retrying(flaky) == "gave up"
    assert calls == 3
    assert retries_counted("test.call", "flaky") == before + 2
    assert [e["attempt"] for e in logs if e["event"] == "test.call_retry"] == [1, 2]
    assert all(e["wait_s"] == 0 for e in logs if e["event"] == "test.call_retry")


def test_jittered_waits_grow_from_the_base_to_the_cap() -> None:
    policy = RetryPolicy.jittered("test.jitter", base_s=0.05, max_s=1.0, jitter_s=0.05)
    assert 0.05 <= policy.delay_s(1) <= 0.1
    assert 0.1 <= policy.delay_s(2) <= 0.15
    assert policy.delay_s(20) == 1.0
