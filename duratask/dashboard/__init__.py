"""The web dashboard (SPEC §6): instances, one instance's history as a timeline, and actions.

``run_dashboard(connection_string, host, port)`` serves it until cancelled; ``create_app`` is the
ASGI application, for tests and for mounting elsewhere.
"""

from .app import create_app, run_dashboard

__all__ = ["create_app", "run_dashboard"]
