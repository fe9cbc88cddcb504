"""MDP agent: the part of the Machine Diagnostics Protocol that runs on a managed machine.

Everything under agent_src/ must run on Python 3.4 with the standard library only.
"""

__version__ = "0.1.0"
