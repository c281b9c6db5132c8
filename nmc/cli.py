"""nmc-server's command line: the usage text below is the documentation, docopt parses it.

Every error reaches the user as one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import itertools
import logging
import re
import sys
import time
from contextlib import contextmanager

import gevent
from docopt import DocoptExit, docopt

from nmc import __version__
from nmc.config import Config
from nmc.errors import NmcError, UsageError

USAGE = """\
nmc-server: N replicas of a Node.js site in Docker, behind one port, relayed round-robin.

Usage:
  nmc-server [options] [--name NAME] [--image IMAGE] [--max-surge N] [--admin-port PORT]
             [--admin-token-file FILE] [-e KEY=VALUE]... [--cap-add CAP]...
             [--network NAME]... [--volume SOURCE:TARGET]... [--build-arg KEY=VALUE]...
  nmc-server status [--admin-port PORT] [--name NAME] [--admin-token-file FILE]
  nmc-server scale N [--admin-port PORT] [--name NAME] [--admin-token-file FILE]
  nmc-server rollout [--image IMAGE] [--max-surge N] [--admin-port PORT] [--name NAME]
                     [--admin-token-file FILE]
  nmc-server logs [-f] [--name NAME]
  nmc-server events [-f] [--name NAME]
  nmc-server ls
  nmc-server -h | --help
  nmc-server -v | --version

Options:
  -p, --port PORT            Port that clients connect to [default: 3000].
  -b, --bind ADDRESS         Address to listen on [default: 0.0.0.0].
  -n, --replicas N           Number of replicas (containers) to run [default: 2].
  --base-port PORT           Host port of the first replica; the others follow it. By
                             default the ports after --port: 3001, 3002, ... for 3000.
  --image IMAGE              Docker image of the site [default: nodejs.org].
  --build DIR                Build the image from the app folder DIR first (its Dockerfile,
                             or for a Node.js app without one: `npm start` on a Node.js
                             base) and run that; named --image if given, else NAME-app.
  --build-arg KEY=VALUE      Pass a build argument to --build (repeatable): its Dockerfile's
                             ARGs, or npm's settings and proxy (NPM_CONFIG_REGISTRY=...).
  --watch                    With --build: when a file in DIR changes, rebuild and roll out
                             (node_modules, .git and .dockerignore's patterns excepted).
  --container-port PORT      Port the site listens on inside its container; replicas get
                             it as PORT too [default: 8080].
  -e, --env KEY=VALUE        Set a variable in every replica's environment (repeatable).
  --env-file FILE            Read replica variables from FILE: KEY=VALUE lines, # comments.
  --cap-add CAP              Give the replicas a Linux capability back (repeatable; they run
                             with all dropped and no-new-privileges), e.g. NET_BIND_SERVICE.
  --read-only                Run the replicas with a read-only root filesystem (a tmpfs /tmp).
  --memory SIZE              Memory each replica may use, e.g. 256m, 1g (no swap beyond it);
                             one killed at it is logged as out of memory and replaced.
  --cpus N                   CPUs each replica may use, e.g. 0.5, 2.
  --network NAME             Docker network every replica joins (repeatable), to reach its
                             services by name (postgres:5432); ports stay on 127.0.0.1.
  --volume SOURCE:TARGET     Mount a named volume or a host folder in every replica, as
                             docker's -v (repeatable; :ro at the end for read-only).
  --name NAME                Cluster name: replicas are named NAME-PORT and labelled
                             nmc.cluster=NAME; the subcommands find the cluster by it
                             [default: nmc].
  --health-path PATH         URL path that answers 2xx while a replica is alive
                             [default: /healthz].
  --check-interval SECONDS   Seconds between liveness checks of each replica [default: 5].
  --check-timeout SECONDS    Seconds a liveness check waits for an answer [default: 2].
  --unhealthy-after N        Failed checks in a row that take a replica out of the
                             rotation [default: 2].
  --healthy-after N          Passed checks in a row that bring it back [default: 1].
  --replace-after SECONDS    Seconds a replica may stay out of the rotation, still failing,
                             before it is replaced [default: 15].
  --start-timeout SECONDS    Seconds a new replica has to answer its health path
                             [default: 30].
  --backend-timeout SECONDS  Seconds a replica has to start answering a request (then 504)
                             [default: 30].
  --queue-timeout SECONDS    Seconds a request waits for a ready replica when none is
                             (then 503) [default: 2].
  --graceful-timeout SECONDS  Seconds in-flight requests get to finish on stop [default: 10].
  --header-timeout SECONDS   Seconds a client has to send a request's line and headers
                             [default: 10].
  --idle-timeout SECONDS     Seconds an idle keep-alive client connection stays open
                             [default: 60].
  --max-connections N        Open client connections at most; past it new ones get a 503
                             [default: 10000].
  --max-body-size SIZE       Largest request body, e.g. 10m, 512k (larger: 413); none by
                             default.
  --certfile FILE            Serve HTTPS (TLS 1.2+) with this PEM certificate chain, on the
                             public port and the admin port; read again on SIGHUP.
  --keyfile FILE             The certificate's PEM private key.
  --balance POLICY           How a replica is chosen: roundrobin (each in turn, as the
                             original) or least-conn (the fewest requests in flight)
                             [default: roundrobin].
  --sticky                   Keep each client on its replica while that one is ready
                             (a cookie, nmc_replica), for apps with in-memory sessions.
  --no-served-by             Do not name the replica in an X-Served-By answer header.
  --max-surge N              Replicas a rollout starts at a time, before it removes as
                             many old ones [default: 1].
  --admin-port PORT          Port of the admin interface over HTTP (the dashboard, /status,
                             /metrics, scale, rollout); 0 turns it off. By default --port
                             + 100: 3100 for 3000. The subcommands use it only when it is
                             given; else the cluster's Unix socket, RUN_DIR/NAME.sock (mode
                             0600, no token needed).
  --admin-bind ADDRESS       Address of the admin interface [default: 127.0.0.1]; off
                             loopback, every request to it needs the admin token.
  --admin-token-file FILE    The admin token, which every change (and off loopback, every
                             request) on the admin port needs; else one is made and kept, mode
                             0600, in the run directory, where the subcommands find it by
                             --name when given --admin-port.
  --keep                     Leave the replicas running on exit; the next start with the
                             same --name adopts them.
  --swarm                    Run the replicas as the tasks of one Docker Swarm service
                             named --name (the engine must be a swarm manager).
  -q, --quiet                No log line per request.
  --access-log FILE          Write one line per request to FILE (- for stdout), in the
                             combined log format plus request id, replica and time taken.
  --logs                     Also print the replicas' output, each line prefixed with its
                             replica (as `nmc-server logs -f` does).
  -f, --follow               (logs, events) Keep printing new lines, also of replicas
                             started later.
  -h, --help                 Show this help and exit.
  -v, --version              Show the version and exit.

Subcommands, for a running cluster on this host, found by --name:
  status                     Print its replicas: state, requests, restarts, ...
  scale N                    Grow or shrink it to N replicas (new ones join once ready,
                             leaving ones finish their requests first).
  rollout                    Replace every replica, one at a time, by one of --image (or of
                             the rebuilt image); a new replica that never gets ready stops
                             it and rolls back. SIGHUP to nmc-server does the same.
  logs                       Print the replicas' logs merged, each line prefixed with its
                             replica (-f: keep following).
  events                     Print its recent events: state changes and why, exits, OOM kills,
                             the steps of scales and rollouts (-f: keep following).
  ls                         List the clusters running on this host: name, address, replicas
                             ready, image, uptime, admin URL.

RUN_DIR is $NMC_RUN_DIR, else $XDG_RUNTIME_DIR/nmc-UID, else /tmp/nmc-UID. Replicas publish
their port on 127.0.0.1 only. Ctrl-C or SIGTERM stops the server: in-flight requests finish,
then the replicas are removed (unless --keep); a second Ctrl-C stops at once.
"""

COMMANDS = ("status", "scale", "rollout", "logs", "events", "ls")
EVENTS_POLL = 1.0  # seconds between looks for new events (events -f)

# Go's log package format, as the original printed: 2020/08/05 22:16:19 message
LOG_FORMAT = "%(asctime)s %(message)s"
LOG_DATE_FORMAT = "%Y/%m/%d %H:%M:%S"


def parse_args(argv: list[str]) -> Config:
    """The server's options -> Config; UsageError (one line) for anything docopt or validation
    rejects."""
    return _config_from(_parse(argv))


def _parse(argv: list[str]) -> dict:
    try:
        return docopt(USAGE, argv=argv, default_help=False)
    except DocoptExit as e:
        raise UsageError(_docopt_problem(e, argv)) from None


def _config_from(args: dict) -> Config:
    values = {key.lstrip("-").replace("-", "_"): value for key, value in args.items()
              if key.startswith("--") and key not in ("--follow",)}
    values["served_by"] = not values.pop("no_served_by")
    return Config.from_strings(values)


def _admin_command(args: dict, argv: list[str]) -> int:
    """status, scale N, rollout: requests to the running cluster, over its Unix socket (found by
    --name), or over HTTP to --admin-port when that is given (with the token)."""
    from nmc import admin

    from nmc.admin_auth import client_token

    name = Config.from_strings({"name": args["--name"]}).name
    port = None
    if _given(argv, "--admin-port"):
        port = Config.from_strings({"admin_port": args["--admin-port"]}).admin_port
        if not port:
            raise UsageError("--admin-port 0 is no port to talk to: without --admin-port the "
                             "subcommands use the cluster's socket, found by --name")
    try:
        where, token = (name, None) if port is None else \
            (port, client_token(name, args["--admin-token-file"] or ""))
        if args["status"]:
            print(admin.format_status(admin.call(where, "GET", "/status", token=token)))
        elif args["scale"]:
            count = args["N"]
            if not count.isdigit():
                raise UsageError(f"scale N: N must be a whole number, not {count!r}")
            print(admin.call(where, "POST", "/scale", {"replicas": int(count)}, token)["message"])
        else:
            # without --image: the image the cluster runs now, rebuilt (docopt would say nodejs.org)
            image = args["--image"] if _given(argv, "--image") else None
            body = {"max_surge": Config.from_strings({"max_surge": args["--max-surge"]}).max_surge}
            if image:
                body["image"] = image
            print(admin.call(where, "POST", "/rollout", body, token)["message"])
    except NmcError as e:
        return _fail(e)
    return 0


def _given(argv: list[str], option: str) -> bool:
    """Whether the long `option` is on the command line, rather than docopt's default for it
    (docopt takes any unambiguous prefix of a long option too: --admin-p)."""
    options = _usage_options()
    for arg in argv:
        if arg == "--":
            break
        name = arg.split("=", 1)[0]
        if name.startswith("--") and option.startswith(name) and \
                (name == option or [o for o in options if o.startswith(name)] == [option]):
            return True
    return False


def _events(args: dict) -> int:
    """events [-f]: the cluster's recent events, in the log's own format; -f: then the new ones
    as they come, until Ctrl-C (or the cluster stops)."""
    from nmc import admin

    name = Config.from_strings({"name": args["--name"]}).name
    seen = 0
    try:
        while True:
            answer = admin.call(name, "GET", f"/events?after={seen}", timeout=admin.LIST_TIMEOUT)
            for event in answer["events"]:
                when = time.strftime(LOG_DATE_FORMAT, time.localtime(event["time"]))
                print(f"{when} {event['message']}", flush=True)
            seen = answer["last"]
            if not args["--follow"]:
                return 0
            time.sleep(EVENTS_POLL)
    except NmcError as e:
        return _fail(e)
    except KeyboardInterrupt:
        return 0


def _logs(args: dict) -> int:
    from nmc.logs import show_logs  # imports docker

    try:
        return show_logs(args["--name"], follow=args["--follow"])
    except NmcError as e:
        return _fail(e)
    except KeyboardInterrupt:
        return 0


def _docopt_problem(error: DocoptExit, argv: list[str]) -> str:
    """docopt's complaint, as one line that names the culprit."""
    options = _usage_options()
    expects_value = False
    for arg in argv:
        if expects_value:
            expects_value = False
        elif arg.startswith("--"):
            name = arg.split("=", 1)[0]
            if name not in options:
                return f"unknown option {name} (see nmc-server --help)"
            expects_value = options[name] and "=" not in arg
        elif arg.startswith("-") and len(arg) > 1:
            for index, letter in enumerate(arg[1:], start=2):  # bundled: -qn3
                if "-" + letter not in options:
                    return f"unknown option -{letter} (see nmc-server --help)"
                if options["-" + letter]:
                    expects_value = index == len(arg)
                    break
        elif arg not in COMMANDS:
            return f"unexpected argument {arg!r} (see nmc-server --help)"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "requires argument" in text:
        return f"{text} (see nmc-server --help)"
    return "an option is given twice, or options that do not go together (see nmc-server --help)"


def _usage_options() -> dict[str, bool]:
    """Every option in USAGE -> whether it takes a value (an option's own line starts two
    spaces in; a description's next lines, which may start with an option's name, further)."""
    options = {}
    for line in USAGE.split("Options:", 1)[1].splitlines():
        match = re.match(r"  (-\w)?(?:, )?(--[\w-]+)?( [A-Z]+)?", line)
        if match and (match.group(1) or match.group(2)):
            for name in filter(None, match.group(1, 2)):
                options[name] = bool(match.group(3))
    return options


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE, end="")
        return 0
    if any(arg in ("-v", "--version") for arg in argv):
        print(f"nmc-server {__version__}")
        return 0
    try:
        args = _parse(argv)
        if args["logs"]:
            return _logs(args)
        if args["events"]:
            return _events(args)
        if args["ls"]:
            from nmc import admin

            print(admin.format_clusters(admin.list_clusters()))
            return 0
        if args["status"] or args["scale"] or args["rollout"]:
            return _admin_command(args, argv)
        config = _config_from(args)
    except UsageError as e:
        return _fail(e)
    spinner = Spinner(sys.stdout)
    setup_logging(config.quiet, spinner)
    from nmc.server import NmcServer  # after logging: importing it pulls in docker and requests

    try:
        return NmcServer(config).run(progress=spinner.show)
    except NmcError as e:
        return _fail(e)
    except KeyboardInterrupt:
        return 130


def _fail(error: NmcError) -> int:
    message = str(error).replace("\n", " ").strip()
    print(f"nmc-server: error: {message}", file=sys.stderr, flush=True)
    return error.exit_code


def setup_logging(quiet: bool, spinner: "Spinner") -> None:
    """./nmc_server.py: every log line on stderr, wiping the spinner's line first."""
    install_log_handler(logging.getLogger(), _SpinnerAwareHandler(sys.stderr, spinner), quiet)


def install_log_handler(logger: logging.Logger, handler: logging.Handler, quiet: bool) -> None:
    """`logger`'s lines through `handler` in the original's format (the one set-up of both
    hosts); libraries say only warnings; -q silences the per-request line (nmc.proxy's INFO)."""
    handler.setFormatter(logging.Formatter(LOG_FORMAT, LOG_DATE_FORMAT))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    set_log_levels(quiet)


def set_log_levels(quiet: bool) -> None:
    for noisy in ("urllib3", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if quiet:
        logging.getLogger("nmc.proxy").setLevel(logging.WARNING)


class Spinner:
    """`✓ text` when done; a spinner while working when the stream is a terminal."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.text = ""
        self.active = False

    @contextmanager
    def show(self, text: str):
        self.text, self.active = text, True
        animation = gevent.spawn(self._animate) if self.tty else None
        ok = False
        try:
            yield
            ok = True
        finally:
            self.active = False
            if animation is not None:
                animation.kill()
                self.clear()
            self.stream.write(f"{'✓' if ok else '✗'} {text}\n")
            self.stream.flush()

    def _animate(self) -> None:
        for frame in itertools.cycle(self.FRAMES):
            self.stream.write(f"\r{frame} {self.text}")
            self.stream.flush()
            gevent.sleep(0.1)

    def clear(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


class _SpinnerAwareHandler(logging.StreamHandler):
    """Log lines on a terminal first wipe the spinner's line; it redraws on its next frame."""

    def __init__(self, stream, spinner: Spinner):
        super().__init__(stream)
        self.spinner = spinner

    def emit(self, record: logging.LogRecord) -> None:
        if self.spinner.active:
            self.spinner.clear()
        super().emit(record)
