"""The operation registry: which operations exist, which are allowed, and how one is called.

Allowlist, never denylist: an operation runs only when it is registered, matched by a pattern of
the `allow` setting, and (if it changes the machine) mutating operations are enabled.

Three sources of operations: the mdp_operations families, the agent's own operations (methods of
mdp_agent.server.Agent, listed in AGENT_OPERATIONS so the controller describes them from the same
docstrings), and site modules dropped into operations_dir (/etc/mdp/operations.d by default).
"""

import errno
import fnmatch
import importlib
import logging
import os
import re
import stat
import sys
import threading
import types

from .errors import MDPError
from .names import MAX_NAME, NAME_PATTERN  # noqa: F401 (the registry's rule; names.py says why apart)

log = logging.getLogger("mdp_agent.registry")

# The codes operations get; the server adds its own (bad_request, not_supported) for requests
# that never reach an operation, so OperationError does not police the list.
ERROR_CODES = ("unknown_operation", "not_allowed", "bad_arguments", "failed", "timeout", "busy",
               "not_available")
# The original MDP's operation names, kept working as aliases of today's operations.
LEGACY_ALIASES = {
    "ping": "system.ping",
    "get_cpu_percent": "cpu.usage",
    "get_machine_memory": "memory.info",
}


# The agent's own operations: (name, method of mdp_agent.server.Agent, flags). The agent binds them
# to itself; the controller's registry describes them from the class, so `mdp ops` and the Ansible
# action plugin know their hints and flags without a second copy of them.
AGENT_OPERATIONS = (
    ("agent.stats", "op_stats", {"inline": True}),
    ("agent.keyring", "op_keyring", {"inline": True}),
    ("report.subscribe", "op_subscribe", {"inline": True, "changes_state": True}),
    ("report.unsubscribe", "op_unsubscribe", {"inline": True, "changes_state": True}),
    ("report.subscriptions", "op_subscriptions", {"inline": True}),
)
# Site operation modules: at most this many files are looked at and each may be this large; a
# directory of hundreds of modules is a mistake, and the agent compiles each on every start.
MAX_SITE_MODULES = 64
MAX_SITE_MODULE_BYTES = 256 * 1024
SITE_MODULE_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}\.py\Z")


class OperationError(MDPError):
    """code: 'unknown_operation', 'not_allowed', 'bad_arguments', 'failed', 'timeout', 'busy', 'not_available'."""

    def __str__(self):
        return "{}: {}".format(self.code, self.message)


def _not_available():
    """mdp_operations.NotAvailable, imported late: the controller may load the registry alone."""
    try:
        from mdp_operations import NotAvailable
    except ImportError:  # no operations package: nothing can raise it
        return ()
    return NotAvailable


class _OutsideAgent(object):
    """Stands in for the agent when the controller describes the agent's own operations."""

    def __getattr__(self, name):
        raise OperationError("not_available", "this operation runs only inside an agent")


# What a parameter without a default has (inspect.Parameter.empty without importing inspect).
_REQUIRED = object()


def _cleandoc(doc):
    """inspect.cleandoc: the docstring without its indentation and blank edge lines.

    Written out because importing inspect (ast, dis, tokenize...) was a fifth of the agent's start-up.
    """
    lines = doc.expandtabs().split("\n")
    margin = None
    for line in lines[1:]:
        content = len(line.lstrip())
        if content:
            indent = len(line) - content
            margin = indent if margin is None else min(margin, indent)
    lines[0] = lines[0].lstrip()
    if margin is not None:
        lines[1:] = [line[margin:] for line in lines[1:]]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    return "\n".join(lines)


def _keyword_parameters(func):
    """[(name, default or _REQUIRED)] of the parameters func takes by keyword, read from its code
    object (a bound method's first one excluded); inspect.signature only for other callables."""
    function = getattr(func, "__func__", func)
    code = getattr(function, "__code__", None)
    if code is None or not isinstance(function, types.FunctionType):
        import inspect
        return [(p.name, _REQUIRED if p.default is p.empty else p.default)
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    first = getattr(code, "co_posonlyargcount", 0)
    if function is not func and getattr(func, "__self__", None) is not None:
        first = max(first, 1)   # bound: self is given
    positional = code.co_varnames[:code.co_argcount]
    keyword_only = code.co_varnames[code.co_argcount:code.co_argcount + code.co_kwonlyargcount]
    defaults = function.__defaults__ or ()
    kwdefaults = function.__kwdefaults__ or {}
    out = []
    for index, name in enumerate(positional):
        if index >= first:
            at = index - (len(positional) - len(defaults))
            out.append((name, defaults[at] if at >= 0 else _REQUIRED))
    for name in keyword_only:
        out.append((name, kwdefaults.get(name, _REQUIRED)))
    return out


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
    """One callable operation: name, func, doc, summary, mutating, changes_state, inline, source.

    mutating: changes the machine (refused unless enable_mutating). changes_state: changes only
    this agent's own state (subscriptions); allowed by default, but check mode holds it back too.
    """

    def __init__(self, name, func, mutating=False, inline=False, changes_state=False, source="builtin"):
        self.name = name
        self.func = func
        self.doc = _cleandoc(func.__doc__ or "")
        self.summary = self.doc.splitlines()[0] if self.doc else ""
        self.mutating = bool(mutating)
        self.changes_state = bool(changes_state)
        self.inline = bool(inline)
        self.source = source
        self._parameters = _keyword_parameters(func)     # [(name, default or _REQUIRED)]
        self._defaults = dict(self._parameters)

    def check_arguments(self, args):
        """Validate args against the signature without running; returns them (None -> {})."""
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise OperationError("bad_arguments", "{}: args must be an object, not {}".format(
                self.name, _json_kind(args)))
        known = self._defaults
        for key in sorted(args, key=str) if args else ():
            if key not in known:
                raise OperationError("bad_arguments", "{}: unknown argument {!r} (takes: {})".format(
                    self.name, key, ", ".join(sorted(known)) or "none"))
            default = known[key]
            # A default of a JSON type fixes the argument's type; None defaults accept anything.
            if default is not _REQUIRED and default is not None \
                    and _json_kind(args[key]) != _json_kind(default):
                raise OperationError("bad_arguments", "{}: argument {!r} must be a {}, not {}".format(
                    self.name, key, _json_kind(default), _json_kind(args[key])))
        for name, default in self._parameters:
            if default is _REQUIRED and name not in args:
                raise OperationError("bad_arguments", "{}: missing required argument {!r}".format(
                    self.name, name))
        return args

    def call(self, args=None):
        """Run with args (dict or None); every failure becomes an OperationError."""
        args = self.check_arguments(args)
        try:
            return self.func(**args)
        except OperationError:
            raise
        except _not_available() as exc:
            raise OperationError("not_available", "{}: {}".format(self.name, exc))
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
        self._verdicts = {}   # name -> (operation, _refusal of it): allow and mutating are fixed per registry

        def get_available_methods():
            """Every operation this agent allows, with its hint.

            No arguments. Returns a list, sorted by name, of {"name", "summary", "doc", "mutating",
            "changes_state"}.
            """
            return self.describe()

        # Every registry can describe itself, including operations registered after this.
        self.register("get_available_methods", get_available_methods, inline=True)
        # Site modules: {"loaded": [file names], "failed": {file name: why}} (agent.stats shows it).
        self.site_modules = {"loaded": [], "failed": {}}
        # Families imported on first use (family -> module name) and legacy aliases resolved then
        # (alias -> target): the agent's start-up compiles only what it runs (no bytecode on hosts).
        self._pending_families = {}
        self._pending_aliases = {}
        self._loading = threading.RLock()

    def add_family(self, family, module_name):
        """Register module_name's public functions as family.function when one is first asked for."""
        self._pending_families[family] = module_name

    def add_alias(self, alias, target):
        """A bare legacy name for target, resolved when first asked for."""
        self._pending_aliases[alias] = target

    def _load_family(self, family):
        with self._loading:
            module_name = self._pending_families.pop(family, None)
            if module_name is None:
                return
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:  # noqa: BLE001 - one broken family must not take the others down
                sys.stderr.write("mdp-agent: skipping operations module {}: {}: {}\n".format(
                    family, type(exc).__name__, exc))
                return
            for name, func in _public_functions(module):
                self.register(family + "." + name, func, mutating=getattr(func, "mdp_mutating", False),
                              inline=getattr(func, "mdp_inline", False))

    def _resolve_alias(self, alias):
        with self._loading:
            target = self._pending_aliases.pop(alias, None)
            if target is None:
                return
            self._load_family(target.partition(".")[0])
            operation = self._operations.get(target)
            if operation is not None:
                self.register(alias, operation.func, operation.mutating, operation.inline)

    def _load_everything(self):
        for family in sorted(self._pending_families):
            self._load_family(family)
        for alias in sorted(self._pending_aliases):
            self._resolve_alias(alias)

    def _get(self, name):
        if name not in self._operations:
            if name in self._pending_aliases:
                self._resolve_alias(name)
            elif name.partition(".")[0] in self._pending_families:
                self._load_family(name.partition(".")[0])
        return self._operations.get(name)

    def register(self, name, func, mutating=False, inline=False, changes_state=False, source="builtin"):
        if not NAME_PATTERN.match(name) or len(name) > MAX_NAME:
            raise ValueError("bad operation name {!r}".format(name))
        if name in self._operations:
            raise ValueError("operation {} is already registered".format(name))
        operation = Operation(name, func, mutating, inline, changes_state, source)
        self._operations[name] = operation
        return operation

    def register_agent_operations(self, agent):
        """Bind AGENT_OPERATIONS to agent's methods, replacing the descriptions the registry had."""
        for name, method, flags in AGENT_OPERATIONS:
            self._operations.pop(name, None)
            self.register(name, getattr(agent, method), **flags)

    def load_site_modules(self, directory):
        """Register each NAME.py in directory as operations NAME.function (see docs/operations.md).

        A module that cannot be read or run, or that would shadow a built-in operation, is logged,
        listed in site_modules["failed"] and left out; the others still load.
        """
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # no directory: no site operations, the usual case
                self.site_modules["failed"][directory] = "cannot list: {}".format(exc.strerror)
                log.error("site operations: cannot list %s: %s", directory, exc.strerror)
            return
        candidates = [n for n in names if n.endswith(".py")]
        for index, filename in enumerate(candidates):
            if index >= MAX_SITE_MODULES:
                self._site_failed(filename, "more than {} site modules; the rest are ignored".format(
                    MAX_SITE_MODULES))
                continue
            try:
                self._load_site_module(directory, filename)
            except Exception as exc:  # noqa: BLE001 - one broken site module must not stop the agent
                self._site_failed(filename, "{}: {}".format(type(exc).__name__, exc))
            else:
                self.site_modules["loaded"].append(filename)

    def _site_failed(self, filename, why):
        self.site_modules["failed"][filename] = why
        log.error("site operations: not loading %s: %s", filename, why)

    def _load_site_module(self, directory, filename):
        if not SITE_MODULE_PATTERN.match(filename):
            raise ValueError("file name must be a Python identifier of at most 32 characters + .py")
        family = filename[:-3]
        path = os.path.join(directory, filename)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            st = os.fstat(fd)
            # Code the agent runs as root: only a regular file that no one else could have written.
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if st.st_uid not in (0, os.getuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                raise ValueError("must be owned by root (or the agent's user) and writable by no one else")
            if st.st_size > MAX_SITE_MODULE_BYTES:
                raise ValueError("larger than {} bytes".format(MAX_SITE_MODULE_BYTES))
            with os.fdopen(os.dup(fd), "rb") as handle:
                source = handle.read(MAX_SITE_MODULE_BYTES + 1)
        finally:
            os.close(fd)
        shadowed = [n for n in self._operations if n == family or n.startswith(family + ".")]
        if family in self._pending_families or family in self._pending_aliases:
            shadowed.append(family + ".*")
        if shadowed:
            raise ValueError("would shadow built-in operation(s) {}".format(", ".join(sorted(shadowed)[:5])))
        module = types.ModuleType("mdp_site_operations." + family)
        module.__file__ = path
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the site's own code, root-owned
        functions = list(_public_functions(module))
        if not functions:
            raise ValueError("defines no public function")
        for name, func in functions:
            self.register(family + "." + name, func, mutating=getattr(func, "mdp_mutating", False),
                          source="site:" + filename)

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
        operation = self._get(name)
        if operation is None:
            raise OperationError("unknown_operation", "no operation named {}".format(name))
        verdict = self._verdicts.get(name)
        if verdict is None or verdict[0] is not operation:   # one fnmatch per operation, not per request
            verdict = self._verdicts[name] = (operation, self._refusal(operation))
        refusal = verdict[1]
        if refusal:
            raise OperationError("not_allowed", refusal)
        return operation

    def describe(self):
        """[{"name", "summary", "doc", "mutating", "changes_state"}] of the allowed operations, by name."""
        self._load_everything()
        return [{"name": op.name, "summary": op.summary, "doc": op.doc, "mutating": op.mutating,
                 "changes_state": op.changes_state}
                for name, op in sorted(self._operations.items()) if self._refusal(op) is None]

    def names(self):
        self._load_everything()
        return sorted(self._operations)


def _public_functions(module):
    for name, value in sorted(vars(module).items()):
        # Only functions defined in the module itself: not helpers it imported.
        if not name.startswith("_") and isinstance(value, types.FunctionType) \
                and value.__module__ == module.__name__:
            yield name, value


def load_default_registry(allow=("*",), enable_mutating=False, operations_dir=None):
    """A registry of every mdp_operations family, the legacy bare names, the agent's own operations
    (described from mdp_agent.server.Agent until an agent binds them) and, when operations_dir is
    given, the site modules in it.

    Families are imported when one of their operations is first asked for (or on describe()/names()):
    a module that fails to import is reported on stderr then and left out; the others still load.
    """
    import mdp_operations

    from .server import Agent

    registry = Registry(allow, enable_mutating)
    outside = _OutsideAgent()
    for name, method, flags in AGENT_OPERATIONS:
        registry.register(name, types.MethodType(getattr(Agent, method), outside), **flags)
    for family in _family_names(mdp_operations.__path__):
        registry.add_family(family, "mdp_operations." + family)
    for alias, target in sorted(LEGACY_ALIASES.items()):
        registry.add_alias(alias, target)
    if operations_dir:
        registry.load_site_modules(operations_dir)
    return registry


def _family_names(package_path):
    """The family modules (NAME.py, NAME not starting with "_") of a package's directories, sorted.

    A directory listing, not pkgutil.iter_modules: importing pkgutil (and typing with it) cost the
    agent's start-up ~9 ms for the same answer.
    """
    names = set()
    for directory in package_path:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".py") and not entry.startswith("_") and NAME_PATTERN.match(entry[:-3]) \
                    and "." not in entry[:-3]:
                names.add(entry[:-3])
    return sorted(names)
