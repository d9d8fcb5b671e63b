"""Keeps held events from being redelivered: `in_progress()` on every event held longer than
a third of the consumer's ack_wait, so another instance does not get it while this one
retries, is paused or waits for a dead letter."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import nats.errors

from services.broadcaster.pending import Pending
from services.broadcaster.window import Window

__all__ = ["keep_alive"]


async def keep_alive(window: Window[Pending], ack_wait_s: Callable[[], float]) -> None:
    """Forever (the caller owns and cancels the task): touch what `window` holds."""
    while True:
        interval_s = ack_wait_s() / 3
        await asyncio.sleep(interval_s)
        await touch_old(window, interval_s, time.monotonic())


async def touch_old(window: Window[Pending], interval_s: float, now: float) -> None:
    for held in window:
        if now - held.touched_s >= interval_s:
            held.touched_s = now
            with contextlib.suppress(nats.errors.Error):
                await held.item.msg.in_progress()
