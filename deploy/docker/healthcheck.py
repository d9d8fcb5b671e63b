"""Docker HEALTHCHECK for the xregion image: GET /healthz on the running service's admin port.

The image runs one of `xregion bridge|broadcaster|replayer`; which one, and with which
`--config`, is read from the process table, then the admin address from the region file with
the same `XR_*` overrides the service sees. A wildcard bind address (0.0.0.0, ::) is probed on
loopback. Exit 0 when /healthz answers 200 (or the container runs a one-shot command such as
`provision`), 1 otherwise, with one line saying why.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path

SERVICES = ("bridge", "broadcaster", "replayer")
TIMEOUT_S = 3.0
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "*": "127.0.0.1", "::": "::1"}


def service_command(argv: Sequence[str]) -> tuple[str, str | None] | None:
    """(service, --config value or None) if `argv` runs an xregion service, else None."""
    starts = [i for i, arg in enumerate(argv) if Path(arg).name == "xregion"]
    if not starts:
        return None
    args = list(argv[starts[0] + 1 :])
    service = next((a for a in args if a in SERVICES), None)
    if service is None:
        return None
    config: str | None = None
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            config = args[i + 1]
        elif arg.startswith("--config="):
            config = arg.removeprefix("--config=")
    return service, config


def find_service(proc: Path = Path("/proc")) -> tuple[str, str | None] | None:
    """The xregion service running in this container (PID 1, or a child of an init)."""
    for cmdline in _cmdlines(proc):
        found = service_command(cmdline)
        if found is not None:
            return found
    return None


def _cmdlines(proc: Path) -> Iterable[list[str]]:
    pids = sorted(int(p.name) for p in proc.iterdir() if p.name.isdigit())
    for pid in pids:
        try:
            raw = (proc / str(pid) / "cmdline").read_bytes()
        except OSError:
            continue
        yield [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def health_url(admin_listen: str) -> str:
    """`0.0.0.0:9180` -> `http://127.0.0.1:9180/healthz` (wildcards probed on loopback)."""
    host, _, port = admin_listen.rpartition(":")
    host = host.strip("[]")
    host = _WILDCARDS.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/healthz"


def admin_listen(service: str, config: str | None) -> str:
    from shared.settings import load_settings  # the image's installed xregion

    section = getattr(load_settings(config), service)
    return str(section.admin_listen)


def probe(url: str, timeout_s: float = TIMEOUT_S) -> str | None:
    """None when `url` answers 200, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"
    return None if status == 200 else f"{url}: HTTP {status}"


def main() -> int:
    found = find_service()
    if found is None:
        print("healthcheck: no xregion service runs here (one-shot command): ok")
        return 0
    service, config = found
    try:
        url = health_url(admin_listen(service, config))
    except Exception as exc:  # noqa: BLE001 - any failure is one line and "unhealthy"
        print(f"healthcheck: {service}: {exc}", file=sys.stderr)
        return 1
    problem = probe(url)
    if problem is not None:
        print(f"healthcheck: {service}: {problem}", file=sys.stderr)
        return 1
    print(f"healthcheck: {service}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
