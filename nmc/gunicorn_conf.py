"""gunicorn's settings for nmc: `gunicorn -c python:nmc.gunicorn_conf -w 4 -b 0.0.0.0:3000
nmc.wsgi:app`.

It picks nmc's gevent worker (nmc.gunicorn_worker: gunicorn's, serving through nmc's own HTTP
server; `-k gevent` gives gunicorn's own parser back) and hooks nmc into gunicorn's life cycle
(nmc.workers):
- on_starting (the master): gunicorn's settings about reading requests that nmc's server does not
  honour are refused in one line, not ignored;
- post_worker_init: the worker's nmc part learns its gunicorn worker (whose `alive` turns False
  when it is told to stop);
- worker_exit: a worker ends; the supervising one hands the replicas over to the next one, or,
  when the master shuts down, removes them once the other workers are done;
- when_ready and on_exit (the master): note, and forget, that the master shuts down.

No hook says "the master shuts down" before the workers stop: on_exit comes after them, and a
worker ends alike for a shutdown, a reload (HUP), --max-requests or a crash. So when_ready wraps
the master's `stop`, which every shutdown path calls first (SIGTERM, SIGINT, SIGQUIT, a halt) and
a reload never does, to leave a note in the run directory before any worker is told to stop.
Any other end of the supervising worker hands over: the replicas are never removed by mistake.

The master imports only run_dir and nmc.gunicorn_worker here (no Docker SDK, no requests): gevent
patches the workers after the fork, and modules imported before it (ssl) would escape the patching.
"""

import os
import sys

from nmc import run_dir

worker_class = "nmc.gunicorn_worker.Worker"


def on_starting(server):
    from nmc import gunicorn_worker
    if server.cfg.worker_class_str != gunicorn_worker.CLASS_PATH:
        return  # another -k: gunicorn reads the requests, by its own settings
    names = gunicorn_worker.settings_not_honoured(server.cfg)
    if names:
        verb = "does" if len(names) == 1 else "do"
        print(f"nmc-server: error: {', '.join(names)} {verb} not apply with nmc's worker, which "
              "reads requests by nmc's rules (as ./nmc_server.py); -k gevent reads them by "
              "gunicorn's", file=sys.stderr, flush=True)
        sys.exit(3)


def when_ready(server):
    stop = server.stop

    def stop_for_good(graceful=True):
        run_dir.note_shutdown(os.getpid())
        stop(graceful)

    server.stop = stop_for_good


def on_exit(server):
    run_dir.forget_shutdown(os.getpid())


def post_worker_init(worker):
    from nmc import workers
    workers.hooked(worker)


def worker_exit(server, worker):
    from nmc import workers
    workers.on_worker_exit()
