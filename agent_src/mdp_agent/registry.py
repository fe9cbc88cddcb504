"""The operation registry: which operations exist, which are allowed, and how one is called.

Allowlist, never denylist: an operation runs only when it is registered, matched by a pattern of
the `allow` setting, and (if it changes the machine) mutating operations are enabled.
"""

import fnmatch
import importlib
import inspect
import pkgutil
import re
import sys

# The codes operations get; the server adds its own (bad_request, not_supported) for requests
# that never reach an operation, so OperationError does not police the list.
ERROR_CODES = ("unknown_operation", "not_allowed", "bad_arguments", "failed", "timeout", "busy")
# Operation names as requests may spell them: family.function or a bare legacy name.
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")
MAX_NAME = 64
# The original MDP's operation names, kept working as aliases of today's operations.
LEGACY_ALIASES = {
    "ping": "system.ping",
    "get_cpu_percent": "cpu.usage",
    "get_machine_memory": "memory.info",
}


class OperationError(Exception):
    """code: one of 'unknown_operation', 'not_allowed', 'bad_arguments', 'failed', 'timeout', 'busy'."""

    def __init__(self, code, message):
        Exception.__init__(self, "{}: {}".format(code, message))
        self.code = code
        self.message = message

    def to_dict(self):
        return {"code": self.code, "message": self.message}


def _json_kind(value):
    """The JSON type of a value, for comparing an argument with its default."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class Operation:
    """One callable operation: name, func, doc, summary, mutating, inline."""

    def __init__(self, name, func, mutating=False, inline=False):
        self.name = name
        self.func = func
        self.doc = inspect.cleandoc(func.__doc__ or "")
        self.summary = self.doc.splitlines()[0] if self.doc else ""
        self.mutating = bool(mutating)
        self.inline = bool(inline)
        self._parameters = [p for p in inspect.signature(func).parameters.values()
                            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def check_arguments(self, args):
        """Validate args against the signature without running; returns them (None -> {})."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise OperationError("bad_arguments", "{}: args must be an object, not {}".format(
                self.name, _json_kind(args)))
        known = {p.name: p for p in self._parameters}
        for key in sorted(args, key=str):
            if key not in known:
                raise OperationError("bad_arguments", "{}: unknown argument {!r} (takes: {})".format(
                    self.name, key, ", ".join(sorted(known)) or "none"))
            default = known[key].default
            # A default of a JSON type fixes the argument's type; None defaults accept anything.
            if default is not known[key].empty and default is not None \
                    and _json_kind(args[key]) != _json_kind(default):
                raise OperationError("bad_arguments", "{}: argument {!r} must be a {}, not {}".format(
                    self.name, key, _json_kind(default), _json_kind(args[key])))
        for p in self._parameters:
            if p.default is p.empty and p.name not in args:
                raise OperationError("bad_arguments", "{}: missing required argument {!r}".format(
                    self.name, p.name))
        return args

    def call(self, args=None):
        """Run with args (dict or None); every failure becomes an OperationError."""
        args = self.check_arguments(args)
        try:
            return self.func(**args)
        except OperationError:
            raise
        except (ValueError, TypeError) as exc:
            raise OperationError("bad_arguments", "{}: {}".format(self.name, exc))
        except Exception as exc:  # noqa: BLE001 - the reply must say what failed, not kill the agent
            raise OperationError("failed", "{}: {}".format(type(exc).__name__, exc))


class Registry:
    """Registered operations, filtered by the allow patterns and the mutating switch."""

    def __init__(self, allow=("*",), enable_mutating=False):
        if isinstance(allow, str):
            allow = (allow,)
        self.allow = tuple(allow)
        self.enable_mutating = bool(enable_mutating)
        self._operations = {}

        def get_available_methods():
            """Every operation this agent allows, with its hint.

            No arguments. Returns a list, sorted by name, of {"name", "summary", "doc", "mutating"}.
            """
            return self.describe()

        # Every registry can describe itself, including operations registered after this.
        self.register("get_available_methods", get_available_methods, inline=True)

    def register(self, name, func, mutating=False, inline=False):
        if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
            raise ValueError("bad operation name {!r}".format(name))
        if name in self._operations:
            raise ValueError("operation {} is already registered".format(name))
        operation = Operation(name, func, mutating, inline)
        self._operations[name] = operation
        return operation

    def _refusal(self, operation):
        """Why an operation may not run here, or None when it may."""
        if operation.mutating and not self.enable_mutating:
            return "{} changes the machine and mutating operations are disabled".format(operation.name)
        if not any(fnmatch.fnmatchcase(operation.name, p) for p in self.allow):
            return "{} is not matched by the agent's allow list".format(operation.name)
        return None

    def lookup(self, name):
        if not isinstance(name, str) or len(name) > MAX_NAME or not NAME_PATTERN.match(name):
            raise OperationError("unknown_operation", "not an operation name: {!r}".format(name))
        operation = self._operations.get(name)
        if operation is None:
            raise OperationError("unknown_operation", "no operation named {}".format(name))
        refusal = self._refusal(operation)
        if refusal:
            raise OperationError("not_allowed", refusal)
        return operation

    def describe(self):
        """[{"name", "summary", "doc", "mutating"}] of the allowed operations, sorted by name."""
        return [{"name": op.name, "summary": op.summary, "doc": op.doc, "mutating": op.mutating}
                for name, op in sorted(self._operations.items()) if self._refusal(op) is None]

    def names(self):
        return sorted(self._operations)


def _public_functions(module):
    for name, value in sorted(vars(module).items()):
        # Only functions defined in the module itself: not helpers it imported.
        if not name.startswith("_") and inspect.isfunction(value) \
                and value.__module__ == module.__name__:
            yield name, value


def load_default_registry(allow=("*",), enable_mutating=False):
    """A registry of every mdp_operations family plus the legacy bare names.

    A module that fails to import is reported on stderr and left out; the others still load.
    """
    import mdp_operations

    registry = Registry(allow, enable_mutating)
    for info in sorted(pkgutil.iter_modules(mdp_operations.__path__), key=lambda i: i[1]):
        family = info[1]
        if family.startswith("_"):
            continue
        try:
            module = importlib.import_module("mdp_operations." + family)
        except Exception as exc:  # noqa: BLE001 - one broken family must not take the others down
            sys.stderr.write("mdp-agent: skipping operations module {}: {}: {}\n".format(
                family, type(exc).__name__, exc))
            continue
        for name, func in _public_functions(module):
            registry.register(family + "." + name, func,
                              mutating=getattr(func, "mdp_mutating", False),
                              inline=getattr(func, "mdp_inline", False))
    for alias, target in sorted(LEGACY_ALIASES.items()):
        operation = registry._operations.get(target)
        if operation is not None:
            registry.register(alias, operation.func, operation.mutating, operation.inline)
    return registry
