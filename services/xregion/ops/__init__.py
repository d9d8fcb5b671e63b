"""The operator views: `top`, `status`, `trace`, `dlq`, `pause`, `provision`, and what they
read (scrapes, NATS discovery, the deployment's description) and print (tables, JSON)."""
