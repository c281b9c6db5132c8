"""Config: every setting of a cluster, validated in one place.

The CLI builds it from options; `from_env` builds it from NMC_* variables (for gunicorn).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

from nmc.errors import UsageError

# Docker's own rule for container names, which ours are made of: <name>-<port>.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")
MAX_REPLICAS = 64
# Replicas publish their port on loopback only: they are reached through nmc, not directly.
REPLICA_HOST = "127.0.0.1"
DEFAULT_IMAGE = "nodejs.org"
BALANCE_POLICIES = ("roundrobin", "least-conn")
MIN_MEMORY = 6 * 1024 ** 2  # Docker's least memory limit for a container
ADMIN_PORT_OFFSET = 100     # the admin port is the cluster's own + 100 unless given (3100)


@dataclass(frozen=True)
class Config:
    port: int = 3000
    bind: str = "0.0.0.0"
    replicas: int = 2
    base_port: int = 3001
    image: str = DEFAULT_IMAGE
    container_port: int = 8080
    name: str = "nmc"
    health_path: str = "/healthz"
    check_interval: float = 5.0
    check_timeout: float = 2.0
    unhealthy_after: int = 2
    healthy_after: int = 1
    replace_after: float = 15.0
    start_timeout: float = 30.0
    backend_timeout: float = 30.0
    queue_timeout: float = 2.0
    graceful_timeout: float = 10.0
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_connections: int = 10000
    max_body_size: int = 0  # bytes a request body may have at most (413 past it); 0: no limit
    certfile: str = ""      # TLS on the public (and admin) port, with keyfile
    keyfile: str = ""
    balance: str = "roundrobin"  # or "least-conn"
    sticky: bool = False    # cookie-based affinity: a client keeps its replica while it is ready
    build: str = ""         # a folder to build the image from (then named build_image)
    build_arg: tuple[tuple[str, str], ...] = ()  # --build-arg KEY=VALUE: the build's ARGs
    watch: bool = False     # rebuild and roll out when a file under `build` changes
    max_surge: int = 1
    admin_port: int = 3100  # 0: no admin interface
    admin_bind: str = "127.0.0.1"
    admin_token_file: str = ""  # the admin token's file (else one made in the run directory)
    served_by: bool = True
    quiet: bool = False
    logs: bool = False      # also print the replicas' own output
    access_log: str = ""    # a file for one combined-format line per request; "-": stdout
    keep: bool = False
    swarm: bool = False     # the replicas are the tasks of one Docker Swarm service
    env_file: str = ""
    # The environment of every replica: --env-file's variables, then -e's (which win).
    env: tuple[tuple[str, str], ...] = ()
    # Replicas run with every capability dropped and no-new-privileges; these come back.
    cap_add: tuple[str, ...] = ()
    read_only: bool = False  # a read-only root filesystem, with a tmpfs /tmp
    memory: int = 0         # bytes of memory each replica may use (no swap beyond); 0: no limit
    cpus: float = 0.0       # CPUs each replica may use (1.5: one and a half); 0: no limit
    network: tuple[str, ...] = ()  # Docker networks every replica joins (else the default bridge)
    # What every replica mounts, in docker's syntax: SOURCE:TARGET[:ro], SOURCE a named volume
    # or a host path (made absolute here).
    volume: tuple[str, ...] = ()

    @property
    def replica_ports(self) -> list[int]:
        return list(range(self.base_port, self.base_port + self.replicas))

    def replica_name(self, host_port: int) -> str:
        return f"{self.name}-{host_port}"

    @property
    def build_image(self) -> str:
        """The name --build gives the image: --image when given, else <name>-app."""
        return self.image if self.image != DEFAULT_IMAGE else f"{self.name.lower()}-app"

    @property
    def replica_env(self) -> dict[str, str]:
        """The variables every replica gets; PORT is the container port, for apps that read it."""
        return {**dict(self.env), "PORT": str(self.container_port)}

    def validate(self) -> "Config":
        _check_port("--port", self.port)
        _check_port("--base-port", self.base_port)
        _check_port("--container-port", self.container_port)
        if self.admin_port:
            _check_port("--admin-port", self.admin_port)
            if self.admin_port == self.port:
                raise UsageError(f"--admin-port {self.admin_port} is the same as --port: the "
                                 "admin interface needs a port of its own (0 turns it off)")
        elif self.admin_port < 0:
            raise UsageError("--admin-port must be a port number, or 0 for none")
        if self.balance not in BALANCE_POLICIES:
            raise UsageError(f"--balance must be one of {', '.join(BALANCE_POLICIES)}, "
                             f"not {self.balance!r}")
        if not 1 <= self.max_surge <= MAX_REPLICAS:
            raise UsageError(f"--max-surge must be from 1 to {MAX_REPLICAS}, not {self.max_surge}")
        if not 1 <= self.replicas <= MAX_REPLICAS:
            raise UsageError(f"--replicas must be from 1 to {MAX_REPLICAS}, not {self.replicas}")
        if self.swarm:
            self._check_swarm_ports()
        else:
            self._check_host_ports()
        if not _NAME_RE.match(self.name):
            raise UsageError(f"--name {self.name!r} is not a valid container name "
                             "(letters, digits, '_', '.', '-'; starting with a letter or digit)")
        if not self.image.strip():
            raise UsageError("--image must not be empty")
        if not self.health_path.startswith("/"):
            raise UsageError(f"--health-path must start with '/', not {self.health_path!r}")
        for option in ("check_interval", "check_timeout", "start_timeout", "backend_timeout",
                       "header_timeout", "idle_timeout"):
            if getattr(self, option) <= 0:
                raise UsageError(f"--{option.replace('_', '-')} must be more than 0 seconds")
        for option in ("unhealthy_after", "healthy_after"):
            if getattr(self, option) < 1:
                raise UsageError(f"--{option.replace('_', '-')} must be at least 1 check")
        if self.queue_timeout < 0:
            raise UsageError("--queue-timeout must not be negative")
        if self.replace_after < 0:
            raise UsageError("--replace-after must not be negative")
        if self.max_connections < 1:
            raise UsageError(f"--max-connections must be at least 1, not {self.max_connections}")
        if self.graceful_timeout < 0:
            raise UsageError("--graceful-timeout must not be negative")
        if 0 < self.memory < MIN_MEMORY:
            raise UsageError(f"--memory {self.memory} bytes is below Docker's least, 6m")
        if self.cpus < 0:
            raise UsageError(f"--cpus must be a number of CPUs such as 0.5 or 2, not {self.cpus:g}")
        if self.watch and not self.build:
            raise UsageError("--watch goes with --build DIR: it rebuilds and rolls out DIR when "
                             "a file in it changes")
        if self.build_arg and not self.build:
            raise UsageError("--build-arg goes with --build DIR: it is passed to that build")
        if bool(self.certfile) != bool(self.keyfile):
            raise UsageError("--certfile and --keyfile go together: TLS needs the certificate "
                             "and its key")
        port = dict(self.env).get("PORT")
        if port is not None and port != str(self.container_port):
            raise UsageError(f"PORT={port} in the replicas' environment differs from "
                             f"--container-port {self.container_port}: set --container-port instead")
        return self

    def _check_host_ports(self) -> None:
        """The replicas' host ports (one host): from --base-port on, clear of nmc's own."""
        last = self.base_port + self.replicas - 1
        if last > 65535:
            raise UsageError(f"--base-port {self.base_port} with {self.replicas} replicas needs "
                             f"ports up to {last}, past 65535")
        if self.base_port <= self.port <= last:
            raise UsageError(f"--port {self.port} falls inside the replicas' ports "
                             f"{self.base_port}-{last}; pick another --port or --base-port")
        if self.base_port <= self.admin_port <= last:
            raise UsageError(f"--admin-port {self.admin_port} falls inside the replicas' ports "
                             f"{self.base_port}-{last}; pick another --admin-port or --base-port")

    def _check_swarm_ports(self) -> None:
        """--swarm: Swarm gives every task a port of its own on its node; none is the host's."""
        if self.base_port != Config.base_port:
            raise UsageError("--base-port does not apply with --swarm: Swarm gives each task a "
                             "port of its own on its node")

    @classmethod
    def from_strings(cls, values: Mapping[str, str | bool | None]) -> "Config":
        """Build from option values as strings, keyed by field name; missing keys keep defaults."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            if values.get(f.name) is None:
                continue
            raw = values[f.name]
            option = "--" + f.name.replace("_", "-")
            if f.name == "env":
                continue  # below, with --env-file
            if f.name in READERS:
                kwargs[f.name] = READERS[f.name](raw)
            elif f.name in SIZES:
                kwargs[f.name] = _parse_size(option, raw)
            elif f.type == "bool":
                kwargs[f.name] = _parse_bool(option, raw)
            elif f.type == "int":
                kwargs[f.name] = _parse_number(option, raw, int)
            elif f.type == "float":
                kwargs[f.name] = _parse_number(option, raw, float)
            else:
                kwargs[f.name] = str(raw)
        kwargs["env"] = _read_env(values.get("env"), kwargs.get("env_file", ""))
        # The replicas' ports and the admin port follow the cluster's own port (3001, 3002 ...
        # and 3100 for 3000, as the original; 4001, 4002 ... and 4100 for 4000), so that
        # clusters on other ports do not clash.
        port = kwargs.get("port", cls.port)
        if "base_port" not in kwargs and not kwargs.get("swarm"):
            kwargs["base_port"] = port + 1
        if "admin_port" not in kwargs:
            if 65535 - ADMIN_PORT_OFFSET < port <= 65535:
                raise UsageError(f"--port {port}: the admin port would be --port + "
                                 f"{ADMIN_PORT_OFFSET}, past 65535: give --admin-port (0 turns "
                                 "it off)")
            kwargs["admin_port"] = port + ADMIN_PORT_OFFSET
        return cls(**kwargs).validate()

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides) -> "Config":
        """NMC_PORT, NMC_REPLICAS, NMC_BASE_PORT, ...: the CLI options' names, upper-cased."""
        values = {f.name: environ.get("NMC_" + f.name.upper()) for f in dataclasses.fields(cls)}
        values.update({k: str(v) if not isinstance(v, bool) else v for k, v in overrides.items()})
        return cls.from_strings(values)


_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Linux's capabilities (capabilities(7)), as Docker names them; ALL gives every one back.
CAPABILITIES = frozenset("""
    AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE
    DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN
    MAC_OVERRIDE MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID
    SETPCAP SETUID SYSLOG SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE
    SYS_RAWIO SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG WAKE_ALARM ALL""".split())


_SIZE_RE = re.compile(r"(\d+)\s*([kmg]?)b?", re.IGNORECASE)


def _parse_size(option: str, raw) -> int:
    """`10m`, `512k`, `1g`, `4096` (bytes; k, m, g are 1024, 1024², 1024³): nginx's syntax."""
    found = _SIZE_RE.fullmatch(str(raw).strip())
    if not found:
        raise UsageError(f"{option} must be a size such as 10m, 512k or 4096 (bytes), not {raw!r}")
    number, unit = int(found.group(1)), found.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit]


def _read_capabilities(items) -> tuple[str, ...]:
    """--cap-add's values (a list, or from NMC_CAP_ADD one per line or comma-separated), as
    Docker names them: NET_BIND_SERVICE (CAP_net_bind_service is the same one)."""
    if isinstance(items, str):
        items = re.split(r"[\s,]+", items)
    found = []
    for item in items or ():
        name = item.strip().upper()
        if not name:
            continue
        name = name.removeprefix("CAP_")
        if name not in CAPABILITIES:
            raise UsageError(f"--cap-add {item!r}: no such capability (e.g. NET_BIND_SERVICE, "
                             "CHOWN; see capabilities(7))")
        if name not in found:
            found.append(name)
    return tuple(found)


def _items(raw) -> list[str]:
    """A repeatable option's values: a list (the CLI), or one string, one per line or
    comma-separated (an NMC_* variable)."""
    if isinstance(raw, str):
        raw = re.split(r"[\n,]+", raw)
    return [item.strip() for item in raw or () if item.strip()]


def _read_build_args(raw) -> tuple[tuple[str, str], ...]:
    """--build-arg KEY=VALUE items (a bare KEY takes its value from nmc's own environment, as
    docker build does)."""
    return tuple(_read_pairs(raw, "--build-arg").items())


def _read_networks(raw) -> tuple[str, ...]:
    found = []
    for name in _items(raw):
        if not _NAME_RE.match(name):
            raise UsageError(f"--network {name!r}: not a Docker network name")
        if name not in found:
            found.append(name)
    return tuple(found)


_VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")


def _read_volumes(raw) -> tuple[str, ...]:
    """--volume SOURCE:TARGET[:ro|rw], as docker reads it: SOURCE a named volume or a host path
    (absolute, or relative to here: made absolute, as compose does), TARGET an absolute path."""
    found = []
    for item in _items(raw):
        parts = item.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]):
            raise UsageError(f"--volume {item!r}: expected SOURCE:TARGET or SOURCE:TARGET:ro "
                             "(SOURCE a volume name or a host path)")
        source, target = parts[0], parts[1]
        mode = parts[2] if len(parts) == 3 else "rw"
        if mode not in ("ro", "rw"):
            raise UsageError(f"--volume {item!r}: the mode must be ro or rw, not {mode!r}")
        if not target.startswith("/"):
            raise UsageError(f"--volume {item!r}: the path in the container must be absolute")
        if source.startswith((".", "/", "~")):
            source = os.path.abspath(os.path.expanduser(source))
        elif not _VOLUME_NAME_RE.match(source):
            raise UsageError(f"--volume {item!r}: {source!r} is neither a volume name nor a "
                             f"path (write ./{source} for a folder here)")
        found.append(f"{source}:{target}:{mode}")
    targets = [v.split(":")[1] for v in found]
    if len(set(targets)) != len(targets):
        raise UsageError("--volume: two volumes mount at the same path in the container")
    return tuple(found)


def _read_env(items, env_file: str) -> tuple[tuple[str, str], ...]:
    """--env-file's variables, then the -e KEY=VALUE items (a list, or from NMC_ENV one per
    line), later ones winning. The file has docker's format: KEY=VALUE lines, `#` comments,
    and a bare KEY takes its value from nmc's own environment."""
    env: dict[str, str] = {}
    if env_file:
        try:
            with open(env_file, encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    line = line.strip()
                    if line and not line.startswith("#"):
                        _add_env(env, line, f"--env-file {env_file} line {number}")
        except OSError as e:
            raise UsageError(f"--env-file {env_file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--env-file {env_file}: not a text file") from None
    env.update(_read_pairs(items, "-e"))
    return tuple(env.items())


def _read_pairs(items, option: str) -> dict[str, str]:
    """KEY=VALUE items (a list, or a string of one per line: an NMC_* variable), later ones
    winning; a bare KEY takes its value from nmc's own environment."""
    pairs: dict[str, str] = {}
    for item in items.splitlines() if isinstance(items, str) else items or ():
        _add_env(pairs, item, f"{option} {item!r}")
    return pairs


def _add_env(env: dict[str, str], item: str, where: str) -> None:
    key, has_value, value = item.partition("=")
    if not _ENV_NAME_RE.match(key):
        raise UsageError(f"{where}: expected KEY=VALUE with KEY made of letters, digits and '_'")
    if has_value:
        env[key] = value
    elif key in os.environ:
        env[key] = os.environ[key]


# The options whose values are read by a function of their own (repeatable, or of a syntax of
# their own), and those that are sizes (10m, 512k).
READERS = {"cap_add": _read_capabilities, "build_arg": _read_build_args,
           "network": _read_networks, "volume": _read_volumes}
SIZES = ("max_body_size", "memory")


def _check_port(option: str, value: int) -> None:
    if not 1 <= value <= 65535:
        raise UsageError(f"{option} must be a port number from 1 to 65535, not {value}")


def _parse_number(option: str, raw, kind):
    what = "a whole number" if kind is int else \
        "a number of CPUs" if option == "--cpus" else "a number of seconds"
    try:
        value = kind(str(raw).strip())
    except ValueError:
        raise UsageError(f"{option} must be {what}, not {raw!r}") from None
    if kind is float and not math.isfinite(value):
        raise UsageError(f"{option} must be {what}, not {raw!r}")
    return value


def _parse_bool(option: str, raw) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(f"{option} must be true or false, not {raw!r}")
