"""Everything around the three services: the command line (`cli`), the local deployment
(`local`), nats-server config rendering (`natsconf`) and the operator views (`ops`)."""
