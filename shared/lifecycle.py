"""What every service process shares about starting, running and stopping.

* The error hierarchy a service raises when it cannot run (the CLI prints `str()` as one line
  and exits with `.exit_code`)::

      Exception
       └── ServiceError            .exit_code = 1
            ├── <Service>ConfigError   the configuration cannot run (exit 2)
            └── <Service>StartError    a dependency is missing at start (exit 1)

  Each service subclasses `ServiceError` under its own name (`BridgeError`, ...).
* `Closeable`: `async with` for a long-lived component (a connection, publisher, client,
  server) whose `aclose()` releases it, idempotently (httpx's `AsyncClient`). Each component
  writes its own `__aenter__` (what opening means differs), and leaves by `aclose()`.
* `Lifecycle`: the one run of a service (docs/DESIGN.md §5c). The service starts its parts in
  order through it (`enter`, `on_stop`), owns its background tasks through it (`tasks`), and
  names what ends a run besides a requested shutdown (`stop_when`: the NATS connection closed
  for good). A background task that fails, or a part that reports `fail()`, stops the
  service: one error line `<service>.failed` naming the task and its error, then exit code 1.
  `aclose()` stops the parts in reverse order under one deadline (`stop_timeout_s`): a step
  still running when it passes is cancelled (its own cleanup still runs) and logged, and the
  steps after it still run.
* `serve(service, shutdown_trigger=...)`: start, run until the first trigger, stop, log one
  line `<service>.exit` and return the exit code (0 after a requested shutdown, else 1).
* `until_signalled`: the injectable shutdown trigger (hypercorn's `shutdown_trigger=`) wired
  to SIGTERM and SIGINT for a real process; tests pass their own trigger instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from shared.logs import get_logger
from shared.sighup import on_sighup
from shared.tasks import TaskSet

__all__ = ["Closeable", "Lifecycle", "Running", "ServiceError", "serve", "until_signalled"]

T = TypeVar("T")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_SHUTDOWN = "shutdown requested"

log = get_logger("xr.lifecycle")


class ServiceError(Exception):
    """A service cannot run; `str()` is one line for the operator."""

    exit_code = 1


class Closeable:
    """Leaves `async with` by `aclose()`; see the module docstring."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def until_signalled(run: Callable[[Callable[[], Awaitable[object]]], Awaitable[T]]) -> T:
    """Run `run(shutdown_trigger)`, where the trigger completes on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run(stop.wait)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


_Step = Callable[[], Awaitable[object]]
_LATE_STEP_S = 1.0


class Lifecycle:
    """One run of one service; see the module docstring."""

    def __init__(self, service: str, *, stop_timeout_s: float) -> None:
        self.service = service
        self._stop_timeout_s = stop_timeout_s
        self._steps: list[tuple[str, _Step]] = []
        self._triggers: list[tuple[str, asyncio.Event]] = []
        self._log = get_logger(f"xr.{service}")
        self.stopping = False
        self.failure: str | None = None
        self.failed = asyncio.Event()

    # ------------------------------------------------------------------ start

    async def enter(self, part: AbstractAsyncContextManager[T]) -> T:
        """Start `part` (`async with`); it is stopped in reverse start order."""
        entered = await part.__aenter__()
        self.on_stop(functools.partial(part.__aexit__, None, None, None), name=type(part).__name__)
        return entered

    def on_stop(self, step: _Step, *, name: str | None = None) -> None:
        """Run `step` at this point of the reverse order when the service stops."""
        self._steps.append((name or _name_of(step), step))

    def tasks(self, name: str) -> TaskSet:
        """An owner for background tasks: one that fails stops the service; whatever still
        runs is cancelled at this point of the stop order."""
        tasks = TaskSet(name, on_failure=self._task_failed)
        self.on_stop(functools.partial(tasks.cancel, f"{self.service} stopping"), name=name)
        return tasks

    def stop_when(self, event: asyncio.Event, reason: str) -> None:
        """End the run (exit code 1) once `event` is set, saying `reason`."""
        self._triggers.append((reason, event))

    # ------------------------------------------------------------------ run

    def fail(self, what: str, error: BaseException | str) -> None:
        """A part failed and the service cannot go on without it: log it, stop, exit 1."""
        said = error if isinstance(error, str) else repr(error)
        self._log.error(f"{self.service}.failed", failed=what, error=said)
        if self.failure is None:
            self.failure = f"{what} failed: {said}"
        self.failed.set()

    async def until_stopped(self, shutdown_trigger: Callable[[], Awaitable[object]]) -> str:
        """Wait for the first trigger; its reason (`shutdown requested` for the trigger)."""
        waits: dict[str, Awaitable[object]] = {_SHUTDOWN: shutdown_trigger()}
        waits["failed"] = self.failed.wait()
        for reason, event in self._triggers:
            waits[reason] = event.wait()
        return await _first_of(waits)

    def exit_code(self, reason: str) -> int:
        """Log the one exit line; 0 after a requested shutdown, else 1 (also when a part failed
        while stopping)."""
        if self.failure is not None:
            reason = self.failure
        if reason == _SHUTDOWN:
            self._log.info(f"{self.service}.exit", reason=reason, exit_code=0)
            return 0
        self._log.error(f"{self.service}.exit", reason=reason, exit_code=1)
        return 1

    # ------------------------------------------------------------------ stop

    async def aclose(self) -> None:
        """Stop every started part in reverse order under one deadline; idempotent. The
        first error a step raised (other than the deadline) is raised once all have run."""
        self.stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_timeout_s
        error: BaseException | None = None
        while self._steps:
            name, step = self._steps.pop()
            try:
                # After a step that was cut, each later one still gets a moment to close.
                async with asyncio.timeout_at(max(deadline, loop.time() + _LATE_STEP_S)):
                    await step()
            except TimeoutError:
                self._log.warning(
                    f"{self.service}.stop_cut", step=name, stop_timeout_s=self._stop_timeout_s
                )
            except BaseException as exc:  # noqa: BLE001  the other steps still run; raised below
                error = error or exc
        if error is not None:
            raise error

    def _task_failed(self, task: asyncio.Task[Any]) -> None:
        exc = task.exception()
        assert exc is not None
        self.fail(f"task {task.get_name()}", exc)


class Running(Protocol):
    """A service `serve` can run: an async context manager with its `Lifecycle`."""

    @property
    def lifecycle(self) -> Lifecycle: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


S = TypeVar("S", bound=Running)


async def serve(
    service: S,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_started: Callable[[S], None] | None = None,
    reload: Callable[[], object] | None = None,
) -> int:
    """Start `service`, run it until the first trigger, stop it; the exit code (module
    docstring). `reload` runs on SIGHUP while it runs. Start failures raise (ServiceError)."""
    async with service as running:
        if on_started is not None:
            on_started(running)
        with on_sighup(reload) if reload is not None else contextlib.nullcontext():
            reason = await running.lifecycle.until_stopped(shutdown_trigger)
    return running.lifecycle.exit_code(reason)


async def _first_of(waits: dict[str, Awaitable[object]]) -> str:
    """Wait until one of `waits` completes and return its name; the others are cancelled."""
    tasks = TaskSet("serve")
    spawned = {tasks.spawn(_awaited(w), name=name): name for name, w in waits.items()}
    try:
        done, _ = await asyncio.wait(spawned, return_when=asyncio.FIRST_COMPLETED)
        return spawned[next(iter(done))]
    finally:
        await tasks.cancel("serve finished")


def _awaited(awaitable: Awaitable[T]) -> Coroutine[Any, Any, T]:
    async def wait() -> T:
        return await awaitable

    return wait()


def _name_of(step: object) -> str:
    func = step.func if isinstance(step, functools.partial) else step
    return str(getattr(func, "__qualname__", type(func).__name__))
