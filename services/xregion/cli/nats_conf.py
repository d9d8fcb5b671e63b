"""`xregion nats-conf render|certs --topology FILE --out DIR`: nats-server configs of a
super-cluster, and development certificates for one with TLS."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services.xregion.cli.common import (
    EXIT_USAGE,
    CommandError,
    Subparsers,
    add_output_argument,
    epilog,
    wants_json,
)
from services.xregion.natsconf import TopologyError, load_topology, render_topology_file
from services.xregion.natsconf.certs import CertError, DevCertificates, tls_section, write_dev_certs
from services.xregion.ops.output import print_json

__all__ = ["register", "run"]

SUMMARY = "render nats-server configurations of a super-cluster from a topology file"
_CERTS_SUMMARY = "write a development CA and certificates for every server of a topology"
_CERTS_JSON = """\
output json: {"ca_file", "ca_key_file", "ca_created" (false: an existing CA was reused),
  "servers": [{"server", "cert_file", "key_file", "names"}], "client_cert_file",
  "client_key_file", "tls_section" (the topology's [tls] table as TOML text)}

For development and tests only; see docs/SECURITY.md §5 for production certificates.
"""


def register(sub: Subparsers) -> None:
    parser = sub.add_parser("nats-conf", help=SUMMARY, description=SUMMARY)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    render = actions.add_parser(
        "render", help="write one nats-server config per server", description=SUMMARY
    )
    render.add_argument("--topology", type=Path, required=True, metavar="FILE")
    render.add_argument("--out", type=Path, required=True, metavar="DIR")
    render.set_defaults(handler=run)
    certs = actions.add_parser(
        "certs", help=_CERTS_SUMMARY, description=_CERTS_SUMMARY, **epilog(_CERTS_JSON)
    )
    certs.add_argument("--topology", type=Path, required=True, metavar="FILE")
    certs.add_argument("--out", type=Path, required=True, metavar="DIR")
    certs.add_argument("--days", type=_days, default=365, help="validity (default: 365)")
    certs.add_argument(
        "--verify-clients",
        action="store_true",
        help="print a [tls] table that makes the servers require client certificates",
    )
    add_output_argument(certs)
    certs.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.action == "certs":
        return _certs(args)
    try:
        written = render_topology_file(args.topology, args.out)
    except (TopologyError, OSError) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
    for path in written:
        print(path)
    return 0


def _days(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 3650:
        raise argparse.ArgumentTypeError(f"expected 1 to 3650 days, got {text!r}")
    return int(text)


def _certs(args: argparse.Namespace) -> int:
    try:
        topology = load_topology(args.topology)
    except (TopologyError, OSError) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
    try:
        certs = write_dev_certs(topology, args.out, days=args.days)
    except CertError as exc:
        raise CommandError(str(exc)) from None
    section = tls_section(args.out, verify_clients=args.verify_clients)
    if wants_json(args):
        print_json(_document(certs, section))
        return 0
    _print_certs(certs, section)
    return 0


def _print_certs(certs: DevCertificates, section: str) -> None:
    verb = "wrote" if certs.ca_created else "kept"
    print(f"# {verb} the CA {certs.ca_file} (its key: {certs.ca_key_file})")
    for server in certs.servers:
        print(f"# wrote {server.cert_file} for {', '.join(server.names)}")
    print(f"# wrote the client certificate {certs.client_cert_file}")
    print("# The topology's [tls] table (then `xregion nats-conf render`):")
    print(section)
    print("# The services' [nats] settings (tls:// URLs; tls_cert and tls_key only with")
    print("# verify_clients):")
    print(f'tls_ca = "{certs.ca_file.resolve()}"')
    print(f'tls_cert = "{certs.client_cert_file.resolve()}"')
    print(f'tls_key = "{certs.client_key_file.resolve()}"')


def _document(certs: DevCertificates, section: str) -> dict[str, Any]:
    return {
        "ca_file": str(certs.ca_file),
        "ca_key_file": str(certs.ca_key_file),
        "ca_created": certs.ca_created,
        "servers": [
            {
                "server": s.server,
                "cert_file": str(s.cert_file),
                "key_file": str(s.key_file),
                "names": list(s.names),
            }
            for s in certs.servers
        ],
        "client_cert_file": str(certs.client_cert_file),
        "client_key_file": str(certs.client_key_file),
        "tls_section": section,
    }
