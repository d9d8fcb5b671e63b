"""The replayer: other regions' events back into HTTP calls on this region's services.

Modules, pure core first:

* `pathsafe`   — may this path be appended to a base URL? (`check_path`)
* `request`    — event + configured services → the call (`build_request`)
* `classify`   — HTTP status / transport error → applied | stale | retry | poison
* `outcomes`   — `Done`, `Retry(delay_s)`, `Poison(reason)`
* `excerpt`    — a service's answer body → one safe line for dead letters and logs
* dead-letter and replay message shapes: `shared.dlq` (the broadcaster files dead letters too)
* `versions`   — last-writer-wins records and per-key claims in KV `xr-versions-<region>`,
                 with the records this instance last saw remembered (why that is safe: there)
                 (compare-and-set updates through `shared.kvcas`, cheaper than nats-py's)
* `partitions` — per-key order within and across instances (see its docstring)
* `upstream`   — pooled aiohttp client with bounded, jittered retries (why not httpx: there)
* `apply`      — one delivery → one decision (`Applier.handle`)
* `consumer`   — fetch loop, bounded concurrency, heartbeats, outcome → ack/nak/DLQ
* `service`, `main` — wiring, admin port, `xr-replayer` registration, graceful shutdown
"""
