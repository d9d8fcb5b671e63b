"""Test harness: real nats-server super-clusters, waiting on conditions, shared fixtures."""
