"""The broadcaster: fans each event of a region out to the other regions.

Modules, pure core first:

* `policy`    which target regions an event owes (service targets, Xr-Targets, canaries);
* `window`    the events a forwarder holds and the queue of those to (re-)send;
* `gate`      may a forwarder publish now: pause switch plus a circuit breaker with backoff;
* `canary`    canary events, one per target every few seconds, through the same path;
* `pause`     the pause switches in the region's control KV bucket (also used by the CLI);
* `forwarder` one per target: bound pull consumer, admission, acks, shutdown; it runs
  `sender` (ordered pipelined publishes, go-back-N re-sends), `deadletters` (events the
  target refuses for good), `consumer` (the consumer's health), `keepalive` (no
  redelivery of held events) and `pending` (what is held per event);
* `backlog`   backlog and lag per target, read from the consumers;
* `metrics`   the Prometheus metrics (their names are contracts);
* `service`   every part wired together, ordered start and shutdown; `main` the process.
"""
