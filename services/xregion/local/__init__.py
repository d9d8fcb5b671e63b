"""The local deployment: `xregion up` and `demo`, their supervisor and region stacks, the
nats-server super-cluster runner, the gateway fault proxy and `up --prometheus`."""
