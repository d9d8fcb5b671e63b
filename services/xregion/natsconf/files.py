"""Rendered configs on disk: `xregion nats-conf render` (the package's only writes)."""

from __future__ import annotations

from pathlib import Path

from services.xregion.natsconf.render import GENERATED_HEADER, render
from services.xregion.natsconf.topology import Topology, load_topology

__all__ = [
    "render_to_dir",
    "render_topology_file",
]


def render_to_dir(topo: Topology, out_dir: Path) -> list[Path]:
    """Write `<server>.conf` per server; remove stale generated `.conf` files in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rendered = render(topo)
    written: list[Path] = []
    for name, text in rendered.items():
        path = out_dir / f"{name}.conf"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for stale in out_dir.glob("*.conf"):
        if stale not in written and _is_generated(stale):
            stale.unlink()
    return written


def _is_generated(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return fh.readline().rstrip("\n") == GENERATED_HEADER


def render_topology_file(topology_path: Path, out_dir: Path) -> list[Path]:
    """`xregion nats-conf render --topology FILE --out DIR`: load, validate, render, write."""
    return render_to_dir(load_topology(topology_path), out_dir)
