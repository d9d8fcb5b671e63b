"""The bridge: an HTTP reverse proxy that turns successful writes into durable events.

Modules, by role: `routing` and `headers` and `event` (pure policy), `upstream` (HTTP
client), `publisher` (JetStream), `outbox` and `drainer` (local durable spool), `delivery`
(publish-or-spool), `proxy` (one request), `service` (wiring, start and stop), `main`
(signals).
"""
