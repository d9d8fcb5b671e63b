"""`wait_until`: the only waiting primitive tests use (STYLE: wait on conditions, never sleep).

It polls a sync or async predicate until it returns something truthy and returns that value,
or raises `TimeoutError` naming what was awaited. An async predicate that hangs is cut off at
the deadline too, so a wait never outlives its timeout by more than one `interval`.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

__all__ = ["wait_until"]

T = TypeVar("T")


def _describe(predicate: Callable[[], object], message: str | None) -> str:
    if message:
        return message
    return getattr(predicate, "__qualname__", None) or repr(predicate)


async def _evaluate(predicate: Callable[[], T | Awaitable[T]], budget_s: float) -> T:
    result = predicate()
    if inspect.isawaitable(result):
        async with asyncio.timeout(max(budget_s, 0.0)):
            return await result
    return result


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float,  # noqa: ASYNC109
    *,
    interval: float = ...,
    message: str | None = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    timeout: float,  # noqa: ASYNC109
    *,
    interval: float = ...,
    message: str | None = ...,
    ignore: tuple[type[Exception], ...] = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    # The deadline is the point of this helper (it names what timed out), so it takes one.
    timeout: float,  # noqa: ASYNC109
    *,
    interval: float = 0.05,
    message: str | None = None,
    ignore: tuple[type[Exception], ...] = (),
) -> T:
    """Poll `predicate` until it returns a truthy value; return that value.

    `ignore` lists exception types that mean "not yet" (e.g. a request that finds no
    responders until interest has propagated); the last one is named in the TimeoutError.
    Any other exception propagates at once.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = await _evaluate(predicate, deadline - loop.time())
        except ignore as exc:
            last_error = exc
        except TimeoutError:
            if loop.time() < deadline:
                raise  # the predicate's own timeout, not the deadline's
        else:
            if value:
                return value
        if loop.time() >= deadline:
            raise TimeoutError(_timeout_text(predicate, message, timeout, last_error))
        await asyncio.sleep(interval)


def _timeout_text(
    predicate: Callable[[], object], message: str | None, timeout: float, error: Exception | None
) -> str:
    text = f"timed out after {timeout:g} s waiting for: {_describe(predicate, message)}"
    if error is not None:
        text += f" (last error: {type(error).__name__}: {error})"
    return text
