"""Supervision of the local deployment's service processes (`xregion up`).

Each `ProcessSpec` is one process (a region's bridge, broadcaster, replayer or demo
service). The supervisor starts them, waits until each answers its readiness URL, restarts
one that exits on its own (exponential backoff, reset once it has stayed up a while), and
stops them in groups, in order (bridges first so no new writes arrive, then replayers,
broadcasters, demo services): SIGTERM, a deadline, then SIGKILL. Every child is also tied
to this process with PR_SET_PDEATHSIG, so even a crashed `xregion up` leaves no orphans.

Output of each process goes to its own log file; `tail` of it is quoted when a process
fails to become ready.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.xregion.local.supercluster import die_with_parent, stop_process
from shared.logs import get_logger
from shared.tasks import TaskSet

__all__ = ["ProcessSpec", "Supervisor", "SupervisorError"]

log = get_logger("xr.up")

_STOP_TIMEOUT_S = 15.0
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_STABLE_AFTER_S = 30.0
_LOG_TAIL_LINES = 5


class SupervisorError(Exception):
    """A process could not be started or did not become ready; one line for the user."""


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    name: str  # e.g. "us-east-bridge"
    argv: tuple[str, ...]
    log: Path
    ready_url: str
    group: int  # stop order: lower groups stop first
    env: Mapping[str, str] = field(default_factory=dict)


class _Slot:
    """One supervised process and its history."""

    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    async def spawn(self, cwd: Path) -> None:
        self.spec.log.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=dict(self.spec.env),
                cwd=cwd,
                preexec_fn=die_with_parent,
            )
        self.started_at = time.monotonic()

    async def terminate(self, timeout_s: float) -> None:
        """SIGTERM, wait up to `timeout_s`, then SIGKILL; always reaps."""
        if self.proc is not None and await stop_process(self.proc, timeout_s):
            log.warning("up.kill", process=self.spec.name, after_s=timeout_s)

    def log_tail(self) -> str:
        try:
            lines = self.spec.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-_LOG_TAIL_LINES:]) or "(empty log)"


class Supervisor:
    """Starts, watches, restarts and stops a set of processes; an async context manager
    whose exit stops everything."""

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        *,
        cwd: Path,
        on_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._slots = {spec.name: _Slot(spec) for spec in specs}
        self._cwd = cwd
        self._on_restart = on_restart
        self._watchers = TaskSet("up.supervisor")
        self._stopping = False

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def pids(self) -> dict[str, int | None]:
        return {name: slot.pid for name, slot in self._slots.items()}

    def restarts(self) -> dict[str, int]:
        return {name: slot.restarts for name, slot in self._slots.items()}

    async def start(self) -> None:
        for slot in self._slots.values():
            await self._spawn(slot)
        for slot in self._slots.values():
            _ = self._watchers.spawn(self._watch(slot), name=f"watch {slot.spec.name}")

    async def wait_ready(self, timeout_s: float) -> None:
        """Until every process answers 200 on its readiness URL; SupervisorError naming the
        first one that exits or is still not ready at the deadline."""
        deadline = time.monotonic() + timeout_s
        waiting = dict(self._slots)
        async with httpx.AsyncClient(timeout=1.0) as client:
            while waiting:
                for name, slot in list(waiting.items()):
                    if await _answers(client, slot.spec.ready_url):
                        del waiting[name]
                    elif slot.proc is not None and slot.proc.returncode is not None:
                        raise SupervisorError(
                            f"{name} exited with code {slot.proc.returncode}: {slot.log_tail()}"
                        )
                if waiting and time.monotonic() > deadline:
                    name, slot = next(iter(waiting.items()))
                    raise SupervisorError(
                        f"{name} not ready after {timeout_s:.0f} s "
                        f"({slot.spec.ready_url}); log: {slot.log_tail()}"
                    )
                if waiting:
                    await asyncio.sleep(0.2)  # polling interval of the readiness probes

    async def stop(self) -> None:
        """Stop every process, group by group; idempotent."""
        if self._stopping:
            return
        self._stopping = True
        await self._watchers.cancel("up is stopping")
        for group in sorted({slot.spec.group for slot in self._slots.values()}):
            members = [s for s in self._slots.values() if s.spec.group == group]
            await asyncio.gather(*(s.terminate(_STOP_TIMEOUT_S) for s in members))

    async def _spawn(self, slot: _Slot) -> None:
        try:
            await slot.spawn(self._cwd)
        except OSError as exc:
            raise SupervisorError(f"cannot start {slot.spec.name}: {exc}") from None
        log.info("up.started", process=slot.spec.name, pid=slot.pid)

    async def _watch(self, slot: _Slot) -> None:
        """Restart the process whenever it exits, with backoff, until `stop()`."""
        backoff = _BACKOFF_FIRST_S
        while True:
            assert slot.proc is not None
            code = await slot.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - slot.started_at > _STABLE_AFTER_S:
                backoff = _BACKOFF_FIRST_S
            log.warning(
                "up.exited", process=slot.spec.name, code=code, restart_in_s=backoff,
                log=str(slot.spec.log),
            )  # fmt: skip
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            slot.restarts += 1
            try:
                await self._spawn(slot)
            except SupervisorError as exc:
                log.error("up.restart_failed", process=slot.spec.name, error=str(exc))
                continue
            if self._on_restart is not None:
                self._on_restart(slot.spec.name)


async def _answers(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
