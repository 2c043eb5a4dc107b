"""Change propagation between the flag store, server replicas and SDKs."""
