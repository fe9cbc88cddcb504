"""MDP controller: runs on the monitoring host (Python 3.10+)."""
