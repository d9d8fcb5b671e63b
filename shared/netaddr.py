"""Parsing `host:port` listen addresses from the region file."""

from __future__ import annotations

__all__ = ["split_listen"]


def split_listen(listen: str) -> tuple[str, int]:
    """`"127.0.0.1:8080"` -> `("127.0.0.1", 8080)`; `"[::1]:80"` -> `("::1", 80)`."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {listen!r}")
    return host.strip("[]"), int(port)
