"""The one error model of MDP, shared by the agent and the controller.

Every refusal or failure is an MDPError (or a subclass): a stable `code` that scripts and tests can
match, a prose `message` for people, and optional details. `to_dict()` is how it travels: as the
`error` object of a reply, in `agent.stats`, and in `mdp send --json`.

Must run on Python 3.4, standard library only (the agent imports it).
"""


class MDPError(Exception):
    """Base of every MDP error: `code` is stable (one word, snake_case), `message` is prose."""

    def __init__(self, code, message, **details):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
        self.details = details

    def to_dict(self):
        out = {"code": self.code, "message": self.message}
        out.update(self.details)
        return out


def error_text(error):
    """One line for a person from an error as it travels ({"code", "message"}), or any other value."""
    if isinstance(error, dict):
        return "%s: %s" % (error.get("code", "error"), error.get("message", ""))
    return str(error)
