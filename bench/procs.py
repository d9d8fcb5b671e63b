"""What every benchmark needs around its processes: start one with its output in a log and
stop it at the end, wait for an HTTP endpoint, find processes by a marker in their command
line, and read a process's CPU time from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from services.xregion.local.supercluster import stop_process

__all__ = ["cpu_seconds", "pids_using", "process", "wait_http"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def pids_using(marker: str) -> list[int]:
    """PIDs of live processes whose command line contains `marker` (e.g. their workdir)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


@contextlib.asynccontextmanager
async def process(
    *argv: str, log: Path, env: dict[str, str] | None = None, stop_timeout_s: float = 30
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child process writing to `log`; SIGTERM at the end, SIGKILL after the timeout."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
    try:
        yield proc
    finally:
        await stop_process(proc, stop_timeout_s)


async def wait_http(url: str, timeout_s: float = 30) -> None:
    """Until `url` answers 200; TimeoutError naming it after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as reply:
                    if reply.status == 200:
                        return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s} s")
            await asyncio.sleep(0.1)  # polling interval
