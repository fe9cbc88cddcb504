"""MDP operations: one module per family; each public function is an operation named module.function.

Its docstring is the hint users see: the first line is a one-line summary, then the arguments and
the shape of the result. Arguments are keyword arguments with JSON-typed defaults; results are
JSON-serialisable. Modules whose names start with "_" are helpers, not families.

Site modules in /etc/mdp/operations.d use the same decorators (`from mdp_operations import mutating`)
or set the attribute themselves (`func.mdp_mutating = True`).
"""


class NotAvailable(Exception):
    """What the operation needs is not on this machine (no smartctl, no journal...): error code
    "not_available", which callers can tell apart from a failure."""


def mutating(func):
    """Mark an operation that changes the machine: the registry refuses it unless enabled."""
    func.mdp_mutating = True
    return func


def inline(func):
    """Mark a cheap operation that the server runs on its event loop, without the worker-pool hop
    (which costs more than the operation). Only for operations that read a few /proc, /sys or
    /etc files and return: no programs, no sleeps, no statvfs of mounts (NFS can hang), no
    /proc/PID files (a process in D state can block the read); those stay on the pool, whose
    timeout can give up on them."""
    func.mdp_inline = True
    return func
