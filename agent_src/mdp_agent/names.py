"""Operation names as requests may spell them: family.function or a bare legacy name.

A module of its own so that the controller's CLI can refuse a name no agent can have registered
without importing the registry (inspect, pkgutil, logging) on every `mdp send`.
"""

import re

NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")
MAX_NAME = 64
