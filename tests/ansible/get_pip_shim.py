"""Stand-in for get-pip.py, which ansible-test downloads from a host this network cannot reach.

ansible-test runs it inside each fresh venv it makes, with pip's install options and packages as
arguments. Bootstrapping from the interpreter's bundled pip (ensurepip) and then letting that pip
install what was asked for (e.g. pip==24.2 from PyPI) gives the same venv.
"""
import ensurepip
import importlib
import os
import runpy
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points pip at no config file and leaves it so; the site's config (CA bundle) must apply.
os.environ.pop("PIP_CONFIG_FILE", None)
importlib.invalidate_caches()
# get-pip's own switches; pip itself does not know them.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.argv = ["pip", "install"] + args
runpy.run_module("pip", run_name="__main__", alter_sys=True)
