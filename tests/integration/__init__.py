"""Integration tests against real nats-server super-clusters on free loopback ports."""
