"""The broadcaster (DESIGN §5): fans each event of a region out to the other regions.

Modules, pure core first:

* `policy`    which target regions an event owes (service targets, Xr-Targets, canaries);
* `window`    the events a forwarder holds, in per-key lanes (order of one key is kept);
* `gate`      may a forwarder publish now: pause switch plus a circuit breaker with backoff;
* `canary`    canary events, one per target every few seconds, through the same path;
* `pause`     the pause switches in the region's control KV bucket (also used by the CLI);
* `forwarder` one per target: bound pull consumer, pipelined publishes, acks;
* `backlog`   backlog and lag per target, read from the consumers;
* `metrics`   the Prometheus metrics (DESIGN §8 names);
* `service`   every part wired together, ordered start and shutdown; `main` the process.
"""
