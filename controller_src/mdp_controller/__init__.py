"""MDP controller: runs on the monitoring host (Python 3.10+)."""

from mdp_agent import aead, protocol

# The controller side (client, collector, CLI, the Ansible plugin through the client) seals and
# opens with the `cryptography` package; the agent uses the host's libcrypto (its __main__).
protocol.use_aead(aead.cryptography())
