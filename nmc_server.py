#!/usr/bin/env python3
"""nmc-server, launched as a single file: ./nmc_server.py [options] (see --help)."""

from gevent import monkey

monkey.patch_all()  # before anything else imports socket, ssl or threading

import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from nmc.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
