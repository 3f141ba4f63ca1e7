"""duratask: durable orchestrations in Python, self-hosted."""
