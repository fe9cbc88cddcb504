"""The session-scoped `fleet` fixture for tests under tests/fleet/ (defined in mdp_fleet.py)."""

from mdp_fleet import fleet  # noqa: F401
