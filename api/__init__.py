"""The flagrail service: the admin API, the SDK endpoints and the CLI."""
