"""The operation registry: allowlisting, the mutating switch, argument checking, error mapping,
loading of the operation families (including a broken one), and the legacy bare names."""

import inspect
import sys
import textwrap

import pytest

import mdp_operations
from mdp_agent.registry import Operation, OperationError, Registry, load_default_registry
from mdp_operations import inline, mutating


def echo(text="hi", times=1):
    """Repeat text.

    text: what to repeat. times: how often. Returns the repeated string.
    """
    if times < 0:
        raise ValueError("times must not be negative")
    return text * times


def needs_name(name, loud=False):
    """Greet someone."""
    return name.upper() if loud else name


@mutating
def reboot():
    """Restart the machine (pretend)."""
    return "rebooting"


@inline
def quick():
    """Cheap."""
    return 1


def broken():
    """Always fails."""
    raise KeyError("boom")


def bug_with_type_error():
    """Fails like a bug would."""
    return 1 + "1"


def test_operation_metadata():
    op = Operation("t.echo", echo)
    assert op.summary == "Repeat text."
    assert op.doc.startswith("Repeat text.\n\ntext: what to repeat.")
    assert (op.mutating, op.inline) == (False, False)


def test_call_with_none_and_with_arguments():
    op = Operation("t.echo", echo)
    assert op.call(None) == "hi"
    assert op.call({}) == "hi"
    assert op.call({"text": "ab", "times": 3}) == "ababab"


@pytest.mark.parametrize("args, message", [
    ({"nope": 1}, "t.echo: unknown argument 'nope' (takes: text, times)"),
    ({"times": "3"}, "t.echo: argument 'times' must be a number, not string"),
    ({"times": True}, "t.echo: argument 'times' must be a number, not boolean"),
    ({"text": None}, "t.echo: argument 'text' must be a string, not null"),
    ({"times": -1}, "t.echo: times must not be negative"),
    ([1, 2], "t.echo: args must be an object, not array"),
    ("text", "t.echo: args must be an object, not string"),
])
def test_bad_arguments_are_named(args, message):
    with pytest.raises(OperationError) as err:
        Operation("t.echo", echo).call(args)
    assert err.value.code == "bad_arguments"
    assert err.value.message == message
    assert err.value.to_dict() == {"code": "bad_arguments", "message": message}


def test_missing_required_argument():
    op = Operation("t.greet", needs_name)
    with pytest.raises(OperationError) as err:
        op.call({"loud": True})
    assert (err.value.code, err.value.message) == ("bad_arguments", "t.greet: missing required argument 'name'")
    assert op.call({"name": "ada", "loud": True}) == "ADA"


def test_failures_become_failed_with_type_and_message():
    with pytest.raises(OperationError) as err:
        Operation("t.broken", broken).call(None)
    assert err.value.code == "failed"
    assert err.value.message == "KeyError: 'boom'"


def test_type_errors_inside_operations_count_as_bad_arguments():
    """The interface maps ValueError/TypeError to bad_arguments, wherever they come from."""
    with pytest.raises(OperationError) as err:
        Operation("t.bug", bug_with_type_error).call(None)
    assert err.value.code == "bad_arguments"


def test_operation_error_keeps_code_and_message():
    err = OperationError("timeout", "cpu.usage did not finish within 5 s")
    assert (err.code, err.message) == ("timeout", "cpu.usage did not finish within 5 s")
    assert err.to_dict() == {"code": "timeout", "message": "cpu.usage did not finish within 5 s"}
    assert "cpu.usage did not finish" in str(err)


def test_allow_patterns_and_refusal_messages():
    reg = Registry(allow=["t.e*", "t.quick"])
    reg.register("t.echo", echo)
    reg.register("t.greet", needs_name)
    reg.register("t.quick", quick, inline=True)
    assert reg.lookup("t.echo").call(None) == "hi"
    assert reg.lookup("t.quick").inline is True
    with pytest.raises(OperationError) as err:
        reg.lookup("t.greet")
    assert err.value.code == "not_allowed"
    assert "allow list" in err.value.message
    with pytest.raises(OperationError) as err:
        reg.lookup("t.nothing")
    assert err.value.code == "unknown_operation" and "t.nothing" in err.value.message


@pytest.mark.parametrize("name", [None, 5, "", "a b", "../x", "a.b.c", "x" * 65, "ping\n"])
def test_lookup_of_malformed_names(name):
    with pytest.raises(OperationError) as err:
        Registry().lookup(name)
    assert err.value.code == "unknown_operation"


def test_mutating_operations_need_the_switch():
    off = Registry()
    off.register("t.reboot", reboot, mutating=True)
    with pytest.raises(OperationError) as err:
        off.lookup("t.reboot")
    assert err.value.code == "not_allowed" and "mutating" in err.value.message
    assert "t.reboot" not in [d["name"] for d in off.describe()]
    on = Registry(enable_mutating=True)
    on.register("t.reboot", reboot, mutating=True)
    assert on.lookup("t.reboot").call(None) == "rebooting"
    assert {"name": "t.reboot", "summary": "Restart the machine (pretend).",
            "doc": "Restart the machine (pretend).", "mutating": True, "changes_state": False} in on.describe()


def test_mutating_still_needs_the_allow_list():
    reg = Registry(allow=["t.echo"], enable_mutating=True)
    reg.register("t.reboot", reboot, mutating=True)
    with pytest.raises(OperationError) as err:
        reg.lookup("t.reboot")
    assert err.value.code == "not_allowed"


def test_register_refuses_duplicates_and_bad_names():
    reg = Registry()
    reg.register("t.echo", echo)
    for name in ("t.echo", "bad name", "a.b.c"):
        with pytest.raises(ValueError):
            reg.register(name, echo)


def test_get_available_methods_reflects_its_own_registry():
    reg = Registry(allow=["t.*", "get_available_methods"])
    reg.register("t.echo", echo)
    methods = reg.lookup("get_available_methods")
    assert methods.inline is True
    assert [d["name"] for d in methods.call(None)] == ["get_available_methods", "t.echo"]
    reg.register("t.quick", quick)  # registered later, e.g. an agent-internal operation
    reg.register("other.hidden", quick)
    assert [d["name"] for d in methods.call(None)] == ["get_available_methods", "t.echo", "t.quick"]


def test_default_registry_has_families_and_legacy_names():
    reg = load_default_registry()
    names = reg.names()
    for name in ("system.info", "system.uptime", "system.ping", "cpu.usage", "load.avg", "memory.info",
                 "filesystem.usage", "disk.io", "network.interfaces", "network.stats", "network.listening",
                 "process.top", "process.count", "service.status",
                 "ping", "get_cpu_percent", "get_machine_memory", "get_available_methods"):
        assert name in names, name
    # Helpers (modules and functions starting with "_") and imported names are not operations.
    assert not [n for n in names if n.startswith("_") or "._" in n]
    assert "filesystem.re" not in names and "network.socket" not in names
    assert reg.lookup("ping").inline and reg.lookup("system.ping").inline
    # Reads of a few /proc files run on the loop; anything that runs programs, sleeps, statvfs()es
    # mounts or reads /proc/PID (which can block) stays on the pool, whose timeout can give up.
    for name in ("memory.info", "get_machine_memory", "load.avg", "system.uptime", "system.info", "disk.io",
                 "network.stats", "kernel.modules"):
        assert reg.lookup(name).inline, name
    for name in ("cpu.usage", "process.top", "process.count", "filesystem.usage", "service.status",
                 "network.listening", "packages.installed", "logs.tail"):
        assert not reg.lookup(name).inline, name
    assert reg.lookup("ping").call(None)["reply"] == "pong"
    assert "percent" in reg.lookup("get_cpu_percent").call(None)
    assert "total" in reg.lookup("get_machine_memory").call(None)
    described = {d["name"]: d for d in reg.lookup("get_available_methods").call(None)}
    assert described["memory.info"]["summary"] == "Memory and swap use, in bytes."
    assert all(d["summary"] for d in described.values()), "every operation needs a one-line summary"


def test_default_registry_respects_allow():
    reg = load_default_registry(allow=["system.*"])
    assert reg.lookup("system.info")
    for name in ("ping", "cpu.usage", "get_available_methods"):
        with pytest.raises(OperationError) as err:
            reg.lookup(name)
        assert err.value.code == "not_allowed"


@pytest.fixture
def extra_families(tmp_path, monkeypatch):
    """Two more operation modules in a second directory of the mdp_operations package."""
    (tmp_path / "zzgood.py").write_text(textwrap.dedent('''
        from mdp_operations import mutating

        def hello(who="world"):
            """Say hello."""
            return "hello " + who

        @mutating
        def wipe():
            """Pretend to change things."""
            return True
    '''))
    (tmp_path / "zzbroken.py").write_text("import mdp_no_such_module\n")
    monkeypatch.setattr(mdp_operations, "__path__", list(mdp_operations.__path__) + [str(tmp_path)])
    yield
    for name in ("mdp_operations.zzgood", "mdp_operations.zzbroken"):
        sys.modules.pop(name, None)


def test_broken_module_is_skipped_and_reported(extra_families, capsys):
    reg = load_default_registry()
    reg.names()   # families load on first use; names() and describe() load them all
    err = capsys.readouterr().err
    assert "skipping operations module zzbroken" in err and "mdp_no_such_module" in err
    assert reg.lookup("zzgood.hello").call({"who": "fleet"}) == "hello fleet"
    assert reg.lookup("memory.info")  # the others still load
    with pytest.raises(OperationError) as e:
        reg.lookup("zzgood.wipe")
    assert e.value.code == "not_allowed"
    assert load_default_registry(enable_mutating=True).lookup("zzgood.wipe").mutating is True


# --- the agent's own operations, as the controller describes them ------------------------------------

def test_controller_registry_describes_the_agents_own_operations_from_the_agent_class():
    from mdp_agent.server import Agent

    described = {d["name"]: d for d in load_default_registry().describe()}
    for name, method, changes in (("report.subscribe", "op_subscribe", True),
                                  ("report.unsubscribe", "op_unsubscribe", True),
                                  ("report.subscriptions", "op_subscriptions", False),
                                  ("agent.stats", "op_stats", False),
                                  ("agent.keyring", "op_keyring", False)):
        entry = described[name]
        assert entry["doc"] == inspect.cleandoc(getattr(Agent, method).__doc__)  # one copy of the hint
        assert entry["changes_state"] is changes and entry["mutating"] is False
    # Outside an agent they cannot run, and say so.
    with pytest.raises(OperationError) as err:
        load_default_registry().lookup("agent.stats").call(None)
    assert err.value.code == "not_available"
    # The signature is the method's, without self.
    with pytest.raises(OperationError) as err:
        load_default_registry().lookup("report.subscribe").check_arguments({"every": 5})
    assert "missing required argument 'operations'" in err.value.message


def test_an_agent_binds_its_operations_over_the_descriptions():
    class Fake(object):
        stats = {"x": 1}

        def op_stats(self):
            """Counters."""
            return self.stats

        op_subscribe = op_unsubscribe = op_subscriptions = op_keyring = op_stats

    registry = load_default_registry()
    registry.register_agent_operations(Fake())
    assert registry.lookup("agent.stats").call(None) == {"x": 1}
    assert registry.lookup("report.subscribe").changes_state is True


def test_not_available_becomes_its_own_error_code():
    def needs_tool():
        """Needs a tool this machine lacks."""
        raise mdp_operations.NotAvailable("smartctl is not installed")

    reg = Registry()
    reg.register("t.tool", needs_tool)
    with pytest.raises(OperationError) as err:
        reg.lookup("t.tool").call(None)
    assert (err.value.code, err.value.message) == ("not_available", "t.tool: smartctl is not installed")


# --- site operations (operations_dir) -------------------------------------------------------------

SITE_GOOD = '''
"""Site checks."""
from mdp_operations import mutating

def queue_depth(name="default"):
    """Jobs waiting in a site queue.

    name: the queue. Returns {"name", "depth"}.
    """
    return {"name": name, "depth": 3}

@mutating
def flush(name="default"):
    """Empty a site queue (mutating)."""
    return True

def _helper():
    return 1
'''


@pytest.fixture
def site_dir(tmp_path):
    directory = tmp_path / "operations.d"
    directory.mkdir()
    (directory / "sitequeue.py").write_text(SITE_GOOD)
    return directory


def test_site_module_functions_become_operations_with_their_docstrings(site_dir):
    reg = load_default_registry(operations_dir=str(site_dir))
    assert reg.lookup("sitequeue.queue_depth").call({"name": "mail"}) == {"name": "mail", "depth": 3}
    described = {d["name"]: d for d in reg.describe()}
    assert described["sitequeue.queue_depth"]["summary"] == "Jobs waiting in a site queue."
    assert "sitequeue._helper" not in reg.names() and "sitequeue.mutating" not in reg.names()
    assert reg.site_modules == {"loaded": ["sitequeue.py"], "failed": {}}
    with pytest.raises(OperationError) as err:  # the mutating switch holds for site operations too
        reg.lookup("sitequeue.flush")
    assert err.value.code == "not_allowed"
    assert load_default_registry(enable_mutating=True, operations_dir=str(site_dir)).lookup(
        "sitequeue.flush").call(None) is True
    with pytest.raises(OperationError):  # and so does the allow list
        load_default_registry(allow=["system.*"], operations_dir=str(site_dir)).lookup("sitequeue.queue_depth")


def test_broken_site_modules_are_reported_and_the_rest_still_load(site_dir):
    (site_dir / "syntaxerr.py").write_text("def broken(:\n")
    (site_dir / "raises.py").write_text("raise RuntimeError('no database here')\n")
    (site_dir / "empty.py").write_text("X = 1\n")
    (site_dir / "bad-name.py").write_text("def f():\n    '''F.'''\n")
    (site_dir / "notes.txt").write_text("not python, ignored\n")
    reg = load_default_registry(operations_dir=str(site_dir))
    failed = reg.site_modules["failed"]
    assert sorted(failed) == ["bad-name.py", "empty.py", "raises.py", "syntaxerr.py"]
    assert "SyntaxError" in failed["syntaxerr.py"]
    assert "RuntimeError: no database here" in failed["raises.py"]
    assert "no public function" in failed["empty.py"]
    assert reg.site_modules["loaded"] == ["sitequeue.py"]
    assert reg.lookup("sitequeue.queue_depth") and reg.lookup("memory.info")


def test_site_modules_cannot_shadow_built_in_operations(site_dir):
    (site_dir / "system.py").write_text("def info():\n    '''Fake.'''\n    return 'fake'\n")
    (site_dir / "report.py").write_text("def extra():\n    '''Another report op.'''\n")
    reg = load_default_registry(operations_dir=str(site_dir))
    assert "would shadow built-in operation(s)" in reg.site_modules["failed"]["system.py"]
    assert "report.subscribe" in reg.site_modules["failed"]["report.py"]
    assert reg.lookup("system.info").call(None) != "fake"


def test_site_modules_writable_by_others_are_refused(site_dir):
    (site_dir / "loose.py").write_text("def f():\n    '''F.'''\n    return 1\n")
    (site_dir / "loose.py").chmod(0o666)
    reg = load_default_registry(operations_dir=str(site_dir))
    assert "writable by no one else" in reg.site_modules["failed"]["loose.py"]
    assert "loose.f" not in reg.names()


def test_missing_operations_dir_is_no_error(tmp_path):
    reg = load_default_registry(operations_dir=str(tmp_path / "absent"))
    assert reg.site_modules == {"loaded": [], "failed": {}}


def test_families_load_on_first_use(monkeypatch):
    """Start-up compiles only what runs: a fresh registry imports a family when asked for it."""
    for name in [m for m in sys.modules if m.startswith("mdp_operations.") and m != "mdp_operations._host"]:
        monkeypatch.delitem(sys.modules, name)
    reg = load_default_registry()
    assert "mdp_operations.hardware" not in sys.modules
    assert reg.lookup("ping").call(None)["reply"] == "pong"
    assert "mdp_operations.system" in sys.modules and "mdp_operations.hardware" not in sys.modules
    assert reg.lookup("hardware.cpu")
    assert "mdp_operations.hardware" in sys.modules
    with pytest.raises(OperationError) as err:
        reg.lookup("hardware.no_such")
    assert err.value.code == "unknown_operation"
    assert "packages.installed" in reg.names()


def test_operation_errors_are_mdp_errors_with_the_shared_shape():
    from mdp_agent.errors import MDPError
    error = OperationError("busy", "all 4 workers are busy")
    assert isinstance(error, MDPError)
    assert error.to_dict() == {"code": "busy", "message": "all 4 workers are busy"}
    assert str(error) == "busy: all 4 workers are busy"
