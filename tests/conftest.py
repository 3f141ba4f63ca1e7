"""Fixtures shared by every test package."""

from tests.pgserver import (  # noqa: F401  (fixtures)
    _module_private_server,
    pg_fresh_url,
    pg_private_server,
    pg_server,
    pg_url,
)
