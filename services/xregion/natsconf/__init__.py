"""Super-cluster topology model and nats-server config renderer (docs/DESIGN.md §6a, §9).

Pure: a TOML topology goes in, one config text per nats-server comes out. Nothing here opens a
socket or starts a process (the only IO is reading the topology file and writing rendered
files, at the edges: `files`). Modules: `topology` (the model and its loading),
`permissions` (each service user's), `render` (config text), `files` (writing it).

What every rendered server config promises:

* `server_name` unique across the super-cluster (`<cluster>-<index>`), `server_tags`
  `["region:<region>"]` (a tie-breaker is tagged `tiebreaker:<name>` so region placement never
  picks it);
* `cluster.routes` lists every route URL of the cluster *including the server itself* (a
  one-server cluster cannot run clustered JetStream without it, docs/NATS.md §1.2);
* `gateway.gateways` names every cluster of the super-cluster (tie-breaker included) with all
  of its gateway URLs; a server's gateway URL is its `gateway_advertise` when set, so a fault
  proxy placed in front of it is the only address anybody learns (see `faultproxy`);
* `max_payload` raised for an 8 MiB body plus headers, `max_pending >= max_payload`;
* no JetStream `domain` (one meta group spans the super-cluster);
* when TLS is on: TLS on client, route and gateway links (mutual TLS on routes and gateways,
  which is also what authenticates routes);
* when auth is on: one JetStream account with least-privilege per-service users, a system
  account, and gateway credentials; every secret is an environment-variable reference
  (`$XR_NATS_...`) or a bcrypt hash, never a literal.

Errors: `TopologyError` (a `ValueError`), one line naming the offending key.
"""

from __future__ import annotations

from services.xregion.natsconf.files import (
    render_to_dir,
    render_topology_file,
)
from services.xregion.natsconf.permissions import (
    default_user,
    role_permissions,
)
from services.xregion.natsconf.render import (
    GENERATED_HEADER,
    EnvRef,
    Value,
    render,
    render_server,
    server_config,
)
from services.xregion.natsconf.topology import (
    AuthSpec,
    ClusterEndpoints,
    JetStreamSpec,
    PortPlan,
    RegionSpec,
    ServerOverride,
    ServerSpec,
    TiebreakerSpec,
    TlsSpec,
    Topology,
    TopologyError,
    UserSpec,
    build_topology,
    cluster_names,
    endpoints,
    env_references,
    load_topology,
    parse_topology,
    replace,
    server_specs,
)

__all__ = [
    "GENERATED_HEADER",
    "AuthSpec",
    "ClusterEndpoints",
    "EnvRef",
    "JetStreamSpec",
    "PortPlan",
    "RegionSpec",
    "ServerOverride",
    "ServerSpec",
    "TiebreakerSpec",
    "TlsSpec",
    "Topology",
    "TopologyError",
    "UserSpec",
    "Value",
    "build_topology",
    "cluster_names",
    "default_user",
    "endpoints",
    "env_references",
    "load_topology",
    "parse_topology",
    "render",
    "render_server",
    "render_to_dir",
    "render_topology_file",
    "replace",
    "role_permissions",
    "server_config",
    "server_specs",
]
