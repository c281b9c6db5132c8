#!/usr/bin/env python3
"""nmc-server, launched as a single file: ./nmc_server.py [options] (see --help)."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

try:
    import gevent  # noqa: F401
except ImportError:
    # Run with a Python that lacks the dependencies (the system's python3): use the project's
    # virtualenv (made by `make run` / `make venv`) when there is one, else say what to do.
    venv = os.path.join(HERE, ".venv")
    venv_python = os.path.join(venv, "bin", "python")
    if os.path.exists(venv_python) and os.path.realpath(sys.prefix) != os.path.realpath(venv):
        os.execv(venv_python, [venv_python, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(f"nmc-server: error: gevent is not installed for {sys.executable}: run `make run` "
             "(it makes the virtualenv .venv) or `pip install .`")

sys.path.insert(0, HERE)

from nmc.patching import patch_all  # noqa: E402 (nmc's package imports nothing)

patch_all()  # before anything else imports socket, ssl or threading

from nmc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
