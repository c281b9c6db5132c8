"""nmc under gunicorn's gevent worker: `gunicorn -c python:nmc.gunicorn_conf -w 4 -b
0.0.0.0:3000 nmc.wsgi:app` (the settings module picks the worker and installs nmc's hooks).

The cluster's settings come from NMC_* environment variables named like the command line's
options (NMC_REPLICAS=4, NMC_BASE_PORT=3001, NMC_IMAGE=..., NMC_QUIET=1), or from the app
factory's keyword arguments, which win over them: `'nmc.wsgi:create_app(replicas=4)'`.
gunicorn's own options (-b, -w, --graceful-timeout, --keep-alive, ...) govern the listener;
NMC_PORT, NMC_BIND, nmc's connection limits and NMC_BUILD are refused here (NOT_UNDER_GUNICORN).

Each worker relays over the same replicas; one of them supervises (see nmc.workers).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

from gevent import monkey

from nmc.cli import install_log_handler, set_log_levels
from nmc.cluster import Cluster
from nmc.config import Config
from nmc.errors import NmcError
from nmc.proxy import Proxy, open_access_log

log = logging.getLogger(__name__)

# Settings of ./nmc_server.py that gunicorn's own options take the place of: refused, not ignored.
NOT_UNDER_GUNICORN = {
    "port": "gunicorn's -b sets the listener",
    "bind": "gunicorn's -b sets the listener",
    "header_timeout": f"a new connection has nmc-server's default {Config.header_timeout:g} s "
                      "for its request head",
    "idle_timeout": "gunicorn's --keep-alive closes idle connections",
    "max_connections": "gunicorn's --worker-connections caps each worker's connections",
    "certfile": "gunicorn's own --certfile and --keyfile serve TLS",
    "keyfile": "gunicorn's own --certfile and --keyfile serve TLS",
    "build": "build the image first (docker build, or ./nmc_server.py --build DIR once) and "
             "give NMC_IMAGE",
    "watch": "rebuild the image and send gunicorn's master SIGHUP, or use ./nmc_server.py "
             "--build DIR --watch",
}

def create_app(**options) -> Proxy:
    """The WSGI application of one worker process; `options` override the NMC_* variables."""
    from nmc.workers import (
        Worker,  # imports the Docker SDK: only once we know gevent is on
    )

    if not monkey.is_module_patched("socket"):
        _fail("nmc.wsgi needs gunicorn's gevent worker: gunicorn -c python:nmc.gunicorn_conf ... "
              "nmc.wsgi:app (and no other -k, no --preload)")
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(Config)})
    if unknown:
        _fail(f"create_app: no option named {', '.join(unknown)} (the options are the command "
              "line's, with '_' for '-': replicas, base_port, image, ...)")
    for name, instead in NOT_UNDER_GUNICORN.items():
        if name in options or f"NMC_{name.upper()}" in os.environ:
            _fail(f"NMC_{name.upper()} (or create_app's {name}) does not apply under gunicorn: "
                  f"{instead}")
    try:
        config = Config.from_env(os.environ, **options)
    except NmcError as e:
        _fail(f"{e} (from the NMC_* environment or create_app)")
    _setup_logging(config.quiet)
    try:
        access_log = open_access_log(config.access_log)
    except NmcError as e:
        _fail(str(e))
    cluster = Cluster(config, access_log)
    Worker(config, cluster).start()
    return cluster.proxy


def _fail(message: str):
    from nmc.workers import fail_boot
    fail_boot(message)


def _setup_logging(quiet: bool) -> None:
    """nmc's lines on stderr in the original's format, beside gunicorn's own log (not through
    the root logger, which is gunicorn's)."""
    logger = logging.getLogger("nmc")
    if logger.handlers:
        set_log_levels(quiet)
        return
    install_log_handler(logger, logging.StreamHandler(sys.stderr), quiet)
    logger.propagate = False


_app: Proxy | None = None


def __getattr__(name: str):
    """`nmc.wsgi:app`: made on first access (in the worker, after gevent's patching), so that
    importing this module starts nothing."""
    global _app
    if name == "app":
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
