"""Stand-in for get-pip.py, which ansible-test downloads from a host this network cannot reach.

ansible-test runs it inside each fresh venv it makes, with pip's install options and packages as
arguments (e.g. `--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel`). Bootstrapping
from the interpreter's bundled pip (ensurepip), letting that pip install what was asked for, and
removing the setuptools ensurepip brings when get-pip was told not to, gives the same venv.
"""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points pip at no config file and leaves it so; the site's config (CA bundle) must apply.
os.environ.pop("PIP_CONFIG_FILE", None)
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
pip = [sys.executable, "-m", "pip"]
subprocess.check_call(pip + ["install"] + args)
if "--no-setuptools" in sys.argv:
    subprocess.check_call(pip + ["uninstall", "-q", "-y", "setuptools"])
