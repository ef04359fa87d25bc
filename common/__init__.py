"""What the router and the replicas must agree on: config, wire messages, model ids, auth."""
