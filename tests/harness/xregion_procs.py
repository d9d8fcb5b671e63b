"""The real `xregion` processes tests start: a region service (`xregion <service> --config F`)
and one-shot commands (a region's provisioning is tests/harness/provisioning.py).

Every process is stopped by its owner, by PID (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx

from services.xregion.local.supercluster import stop_process

__all__ = [
    "FAST_BROADCASTER",
    "XREGION",
    "ServiceProcess",
    "clean_env",
    "run_xregion",
    "stop",
]

XREGION = Path(sys.executable).parent / "xregion"
_STOP_TIMEOUT_S = 10.0
# A broadcaster with short waits, so canaries, pauses, backlogs and retries show within a
# second or two (the test stacks' `[broadcaster]` section).
FAST_BROADCASTER: dict[str, Any] = {
    "fetch_timeout_s": 0.25,
    "publish_timeout_s": 1.0,
    "ack_wait_s": 3.0,
    "retry_base_s": 0.05,
    "retry_max_s": 0.5,
    "canary_interval_s": 0.5,
    "control_poll_s": 0.1,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}


def clean_env() -> dict[str, str]:
    """The test's environment minus XR_* (so only the region file configures a process)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XR_")}


class ServiceProcess:
    """`xregion <service> --config F` as a real process; its owner always calls `stop()`."""

    def __init__(self, service: str, config: Path, admin_url: str, log_path: Path) -> None:
        self.service = service
        self.admin_url = admin_url
        self._config = config
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(XREGION), "--log-format", "json", self.service, "--config", str(self._config),
                stdout=log, stderr=log, env=clean_env(),
            )  # fmt: skip

    async def ready(self, http: httpx.AsyncClient) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.service} exited ({code}): {self.log_tail()}")
        try:
            reply = await http.get(self.admin_url + "/readyz")
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get("status") == "ok"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL by PID (a crash); `stop()` or `wait_dead()` reaps it."""
        assert self.proc is not None
        self.proc.kill()

    async def wait_dead(self) -> None:
        assert self.proc is not None
        await self.proc.wait()

    async def metrics(self, http: httpx.AsyncClient) -> str:
        reply = await http.get(self.admin_url + "/metrics")
        reply.raise_for_status()
        return reply.text

    async def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it is still there after the deadline; always reaped."""
        await stop(self.proc)


async def stop(proc: asyncio.subprocess.Process | None) -> None:
    """Stop `proc` by PID (SIGTERM, SIGKILL after the deadline), if it was started."""
    if proc is not None:
        await stop_process(proc, _STOP_TIMEOUT_S)


async def run_xregion(
    *args: str, timeout_s: float = 60.0, wide: bool = True
) -> tuple[int, str, str]:
    """`xregion ARGS` to completion: (exit code, stdout, stderr), no colours. `wide`: 200
    columns; otherwise what `xregion ARGS > file` gets (no COLUMNS: rich falls back to 80)."""
    env = {k: v for k, v in clean_env().items() if k not in ("COLUMNS", "LINES")}
    env |= {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"} if wide else {"TERM": "dumb"}
    proc = await asyncio.create_subprocess_exec(
        str(XREGION), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
