#!/usr/bin/env python3
"""A Docker Swarm of three nodes on this one machine, for real: `make swarm-lab`.

Each node is a dockerd of its own (data-root, exec-root, pidfile, Unix socket, cgroup parent and
hostname of its own, all under /run/nmc-swarm-lab/nodeN/) in a network namespace that the lab
creates, joined to the host by a veth pair on the bridge nmclab0, subnet 10.213.0.0/24: the host
is 10.213.0.1, the nodes 10.213.0.11, .12 and .13. Node 1 inits the swarm, nodes 2 and 3 join it
as workers. The image goes to every node with `docker save | docker load` (no registry).

  up      make the lab; prints the line to export to talk to node 1, the manager:
          DOCKER_HOST=unix:///run/nmc-swarm-lab/node1/docker.sock
  status  the nodes (docker node ls through node 1), each node's socket and dockerd
  demo    a service of 6 tasks with host-mode ports spread over the nodes, each task fetched from
          the host at its node's address; node 3's dockerd killed; the tasks moved to nodes 1 and
          2 and fetched again; the service removed; a report in bench/results/swarm-lab-*.md
  down    remove everything the lab made, also after a failed up; twice is fine

Traffic stays on the lab's addresses: the nodes have no default route, swarm listens and
advertises on 10.213.0.1x only, and the host reaches the nodes through their sockets and their
10.213.0.1x addresses. Every wait has a deadline. Needs root, iproute2, util-linux (nsenter,
unshare), iptables, dockerd and the docker CLI. Exit code: 0 done (demo: every check passed),
1 failed, 2 bad options, 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"

# -- what the lab makes: every name, address and folder ----------------------------------------
LAB_DIR = Path("/run/nmc-swarm-lab")     # one folder for all of it: nodeN/ holds a node's sockets,
LAB_STATE = LAB_DIR / "lab.json"         # data-root, exec-root, pidfile and log
LAB_MADE = LAB_DIR / "made.json"         # what up made outside the lab's own names (/run/netns)
NODES = (1, 2, 3)
MANAGER = 1
NETNS = "nmc-lab-{}"                     # node N's network namespace, also its hostname and cgroup parent
BRIDGE = "nmclab0"                       # host side: the nodes' veths are its ports
VETH_HOST = "nmclab-h{}"                 # node N's veth pair: the host end ...
VETH_NODE = "nmclab-n{}"                 # ... and the end inside the namespace
LAB_NET = ipaddress.ip_network("10.213.0.0/24")
HOST_ADDR = "10.213.0.1"
NODE_ADDR = "10.213.0.{}"                # .11, .12, .13 (10 + N)
LAB_SPACE = ipaddress.ip_network("10.213.0.0/16")  # the lab's addresses: checked free before up
NODE_BIP = "10.213.{}.1/24"              # node N's docker0: 10.213.101.1/24, .102, .103 (100 + N)
NODE_POOL = "10.213.{}.0/20"             # node N's local networks (docker_gwbridge): .128, .144, .160
OVERLAY_POOL = "10.213.192.0/20"         # the swarm's overlay networks (ingress), instead of 10.0.0.0/8
SWARM_PORT = 2377
CGROUP_EMPTY_WAIT = 10  # seconds a killed node's cgroups get to empty before down gives up on them
FORWARD_CHAINS = ("DOCKER-USER", "FORWARD")   # the rule goes in the first one that exists
FORWARD_RULE = ("-i", BRIDGE, "-o", BRIDGE, "-m", "comment", "--comment", "nmc-swarm-lab",
                "-j", "ACCEPT")
CGROUPS = Path("/sys/fs/cgroup")
SHIM_SOCKETS = Path("/run/containerd/s")      # containerd's shims put their sockets here, whoever runs them
ENGINE_COMMANDS = {"dockerd", "containerd", "containerd-shim", "docker-proxy", "runc"}  # /proc/PID/comm
DEFAULT_IMAGE = "nodejs.org"

# -- the demo ----------------------------------------------------------------------------------
PROBE_SERVICE = "nmclab-probe"
PROBE_REPLICAS = 6
CONTAINER_PORT = 8080
KILLED_NODE = 3

# -- deadlines, in seconds (a demo that meets none of them stops within ~6 minutes) ---------------
CLI_TIMEOUT = 30          # one docker, ip or iptables command
ENGINE_START = 60         # a node's dockerd to answer on its socket
IMAGE_COPY = 180          # docker save | docker load, per node
JOIN_LIMIT = 60           # docker swarm join
READY_LIMIT = 60          # every node Ready in docker node ls
CONVERGE_LIMIT = 60       # every task of the probe service running
ANSWER_LIMIT = 10         # a running task to answer /whoami
NODE_DOWN_LIMIT = 60      # the manager to mark the killed node down
RESCHEDULE_LIMIT = 60     # every slot running again on the surviving nodes
REMOVE_LIMIT = 30         # the service's containers gone from the surviving nodes
STOP_LIMIT = 30           # a dockerd to exit after SIGTERM (it stops its containers first)
KILL_LIMIT = 10           # a process to be gone after SIGKILL
FETCH_TIMEOUT = 3         # one GET /whoami
POLL = 0.5


class LabError(Exception):
    """A step failed: one line, and optionally lines of context (a log's tail) shown before it."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


LEFT_HINT = ("the lab is left as it is for a look (logs in /run/nmc-swarm-lab/nodeN/dockerd.log); "
             "`scripts/swarm_lab.py down` removes it")
made_something = False   # up has begun to make the lab: on a failure, say how to remove it


def log(message: str) -> None:
    print(f"swarm_lab: {message}", file=sys.stderr, flush=True)


def node_dir(n: int) -> Path:
    return LAB_DIR / f"node{n}"


def node_socket(n: int) -> Path:
    return node_dir(n) / "docker.sock"


def node_pidfile(n: int) -> Path:
    return node_dir(n) / "docker.pid"


def node_log(n: int) -> Path:
    return node_dir(n) / "dockerd.log"


def node_addr(n: int) -> str:
    return NODE_ADDR.format(10 + n)


def docker_host(n: int) -> str:
    return f"unix://{node_socket(n)}"


def host_env() -> dict:
    """The environment for the host's engine: as it is, unless DOCKER_HOST points into the lab."""
    env = dict(os.environ)
    if env.get("DOCKER_HOST", "").startswith(f"unix://{LAB_DIR}/"):
        del env["DOCKER_HOST"]
    return env


def node_env(n: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY")}
    env["DOCKER_HOST"] = docker_host(n)
    return env


def run(args: list[str], *, env: dict | None = None, timeout: float = CLI_TIMEOUT,
        check: bool = True) -> subprocess.CompletedProcess:
    try:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(args)}` did not finish within {timeout}s") from None
    if check and done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise LabError(f"`{' '.join(args)}` failed: {said[-1] if said else f'exit code {done.returncode}'}")
    return done


def docker(n: int, *args: str, timeout: float = CLI_TIMEOUT, check: bool = True):
    return run(["docker", *args], env=node_env(n), timeout=timeout, check=check)


def engine_answers(n: int) -> bool:
    return node_socket(n).exists() and docker(n, "version", "--format", "{{.Server.Version}}",
                                               timeout=10, check=False).returncode == 0


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def require_root() -> None:
    if os.geteuid() != 0 or sys.platform != "linux":
        raise LabError("the lab needs root on Linux (it makes network namespaces, a bridge and dockerds)")


# -- processes: found by pidfile, namespace and cgroup, never by name alone --------------------


def proc_comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def alive(pid: int) -> bool:
    try:  # a zombie is dead for us: its parent (init, once the lab's starter is gone) reaps it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def host_dockerd_pids() -> set[int]:
    """The dockerds that are not the lab's (the host's engine): never signalled."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and proc_comm(int(entry.name)) == "dockerd":
            if not any(arg.startswith(str(LAB_DIR)) for arg in proc_cmdline(int(entry.name))):
                pids.add(int(entry.name))
    return pids


def lab_dockerd_pid(n: int) -> int | None:
    """The pid in node N's pidfile, if that process is node N's dockerd (started with that pidfile)."""
    try:
        pid = int(node_pidfile(n).read_text().strip())
    except (OSError, ValueError):
        return None
    cmdline = proc_cmdline(pid)
    if (alive(pid) and cmdline and os.path.basename(cmdline[0]) == "dockerd"
            and str(node_pidfile(n)) in cmdline and pid not in host_dockerd_pids()):
        return pid
    return None


def netns_engine_pids(n: int) -> list[int]:
    """The engine's processes left in node N's namespace (containerd, shims, docker-proxy)."""
    if not Path(f"/run/netns/{NETNS.format(n)}").exists():
        return []
    listed = run(["ip", "netns", "pids", NETNS.format(n)], check=False).stdout.split()
    return [int(p) for p in listed if p.isdigit() and proc_comm(int(p)) in ENGINE_COMMANDS]


def cgroup_pids(n: int) -> list[int]:
    """The processes of node N's containers: its dockerd puts them under the cgroup nmc-lab-N."""
    pids = set()
    for procs in node_cgroup_dirs(n):
        try:
            pids.update(int(p) for p in (procs / "cgroup.procs").read_text().split())
        except OSError:
            pass
    return sorted(pids)


def node_cgroup_dirs(n: int) -> list[Path]:
    """Node N's cgroup folders in every hierarchy, the deepest first."""
    found = []
    if CGROUPS.is_dir():
        for hierarchy in CGROUPS.iterdir():
            base = hierarchy / NETNS.format(n)
            if base.is_dir():
                found += [p for p in base.rglob("*") if p.is_dir()] + [base]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_cgroup(folder: Path, wait: float = CGROUP_EMPTY_WAIT) -> None:
    """rmdir, again while the kernel still calls it busy: the processes killed a moment ago
    (a killed node's containers) leave it only once they have exited, which on a loaded machine
    takes a while."""
    deadline = time.monotonic() + wait
    while True:
        try:
            folder.rmdir()
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def signal_all(pids: list[int], signum: int) -> None:
    spared = host_dockerd_pids()
    for pid in pids:
        if pid not in spared:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass


def wait_gone(pids: list[int], limit: float) -> list[int]:
    deadline = time.monotonic() + limit
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.1)


# -- up ----------------------------------------------------------------------------------------


def lab_remains() -> list[str]:
    """What of the lab exists on this machine (empty: nothing)."""
    found = [str(LAB_DIR)] * LAB_DIR.exists()
    namespaces = run(["ip", "netns", "list"], check=False).stdout.split()
    found += [f"namespace {NETNS.format(n)}" for n in NODES if NETNS.format(n) in namespaces]
    found += [f"link {link}" for link in [BRIDGE, *(VETH_HOST.format(n) for n in NODES)]
              if link_exists(link)]
    found += [f"iptables rule in {chain}" for chain in forward_rule_chains()]
    found += [f"process {pid} ({proc_comm(pid)})" for pid in lab_processes()]
    return found


def lab_processes() -> list[int]:
    """Every process whose command line names the lab's folder (dockerds, containerds, shims)."""
    spared = host_dockerd_pids()
    return sorted(int(entry.name) for entry in Path("/proc").iterdir()
                  if entry.name.isdigit() and int(entry.name) not in spared
                  and any(str(LAB_DIR) in arg for arg in proc_cmdline(int(entry.name))))


def check_addresses_free() -> None:
    """The host must not use 10.213.0.0/16 already: the lab's routes would shadow it."""
    for what in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show"]):
        for line in run(what).stdout.splitlines():
            for word in (word for word in line.split() if "." in word):
                try:
                    net = ipaddress.ip_network(word, strict=False)
                except ValueError:
                    continue
                if net.prefixlen and net.overlaps(LAB_SPACE):
                    raise LabError(f"the host already uses {net} (`{' '.join(what)}`), which overlaps "
                                   f"the lab's {LAB_SPACE}")


def pick_storage_driver(wanted: str) -> str:
    """overlay2 where the lab folder's filesystem can hold an overlay mount (ext4, xfs, tmpfs),
    else vfs (a full copy per layer: slow, but works on anything, overlayfs included)."""
    if wanted != "auto":
        return wanted
    probe = LAB_DIR / "overlay-probe"
    for part in ("lower", "upper", "work", "merged"):
        (probe / part).mkdir(parents=True)
    options = f"lowerdir={probe}/lower,upperdir={probe}/upper,workdir={probe}/work"
    mounted = run(["mount", "-n", "-t", "overlay", "overlay", "-o", options, str(probe / "merged")],
                  check=False).returncode == 0
    if mounted:
        run(["umount", "-n", str(probe / "merged")])
    shutil.rmtree(probe)
    return "overlay2" if mounted else "vfs"


def make_network() -> None:
    run(["ip", "link", "add", BRIDGE, "type", "bridge"])
    run(["ip", "addr", "add", f"{HOST_ADDR}/{LAB_NET.prefixlen}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    for n in NODES:
        ns, inside = NETNS.format(n), VETH_NODE.format(n)
        run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", VETH_HOST.format(n), "type", "veth", "peer", "name", inside,
             "netns", ns])
        run(["ip", "link", "set", VETH_HOST.format(n), "master", BRIDGE, "up"])
        run(["ip", "-n", ns, "addr", "add", f"{node_addr(n)}/{LAB_NET.prefixlen}", "dev", inside])
        run(["ip", "-n", ns, "link", "set", inside, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # no default route: a node reaches 10.213.0.0/24 and nothing else


def forward_rule_chains() -> list[str]:
    return [chain for chain in FORWARD_CHAINS
            if run(["iptables", "-C", chain, *FORWARD_RULE], check=False).returncode == 0]


def add_forward_rule() -> str:
    """Frames between two nodes cross the host's bridge, and with br_netfilter (which the host's
    dockerd loads) they go through the host's FORWARD chain, whose policy Docker sets to DROP:
    accept what goes from nmclab0 to nmclab0, and nothing else."""
    for chain in FORWARD_CHAINS:
        if run(["iptables", "-n", "-L", chain], check=False).returncode == 0:
            run(["iptables", "-I", chain, "1", *FORWARD_RULE])
            return chain
    raise LabError("iptables has no FORWARD chain")


# `ip netns exec` would remount /sys for the namespace and so lose the cgroup mounts under it
# (dockerd: "Devices cgroup isn't mounted"). Instead: enter the network namespace with nsenter,
# take a mount namespace of our own, keep /sys/fs/cgroup aside, mount the namespace's own sysfs
# (for /sys/class/net), put the cgroups back, set the node's hostname, exec dockerd.
# (mount -n: no note in /run/mount/utab, a folder the host may not have.)
NODE_SHELL = ('set -e; mount -n --rbind /sys/fs/cgroup "$1"; mount -n -t sysfs sysfs /sys; '
              'mount -n --move "$1" /sys/fs/cgroup; hostname "$2"; shift 2; exec "$@"')


def start_dockerd(n: int, storage_driver: str) -> subprocess.Popen:
    d = node_dir(n)
    (d / "cgroup").mkdir(parents=True)
    # a key of its own: by default every dockerd reads /etc/docker/key.json, the host's engine ID
    (d / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(d / "key.json")}) + "\n")
    dockerd = [
        "dockerd", "--config-file", str(d / "daemon.json"),
        "--data-root", str(d / "data"), "--exec-root", str(d / "exec"),
        "--pidfile", str(node_pidfile(n)), "-H", docker_host(n),
        "--storage-driver", storage_driver,
        "--bip", NODE_BIP.format(100 + n),
        "--default-address-pool", f"base={NODE_POOL.format(112 + 16 * n)},size=24",
        "--cgroup-parent", NETNS.format(n),   # its containers' processes: found again by down
        "--swarm-default-advertise-addr", node_addr(n),
        # --iptables and --ip-masq keep their defaults: the namespace has iptables of its own
    ]
    argv = ["nsenter", f"--net=/run/netns/{NETNS.format(n)}", "unshare", "--mount", "--uts",
            "--propagation", "slave", "sh", "-c", NODE_SHELL, "sh", str(d / "cgroup"),
            NETNS.format(n), *dockerd]
    with open(node_log(n), "ab") as out:
        # a session of its own: the node outlives this command; nsenter, unshare and sh exec, so
        # this pid is dockerd's
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                cwd="/", start_new_session=True)


def wait_engines(started: dict[int, subprocess.Popen]) -> None:
    deadline = time.monotonic() + ENGINE_START
    waiting = set(started)
    while waiting:
        for n in sorted(waiting):
            code = started[n].poll()
            if code is not None:
                raise LabError(f"node {n}'s dockerd exited with code {code} (log: {node_log(n)})",
                               tail(node_log(n)))
            if engine_answers(n):
                waiting.discard(n)
        if waiting and time.monotonic() >= deadline:
            n = min(waiting)
            raise LabError(f"node {n}'s dockerd did not answer within {ENGINE_START}s "
                           f"(log: {node_log(n)})", tail(node_log(n)))
        if waiting:
            time.sleep(POLL)


def copy_image(image: str, n: int) -> None:
    """docker save on the host's engine | docker load on node N's."""
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=host_env())
    load = subprocess.Popen(["docker", "load", "-q"], stdin=save.stdout, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=node_env(n))
    save.stdout.close()  # load holds the pipe now: save sees it close if load dies
    try:
        _, load_err = load.communicate(timeout=IMAGE_COPY)
        _, save_err = save.communicate(timeout=CLI_TIMEOUT)
    except subprocess.TimeoutExpired:
        for process in (save, load):
            process.kill()
            process.wait()
        raise LabError(f"copying {image} to node {n} took more than {IMAGE_COPY}s") from None
    if save.returncode or load.returncode:
        said = (save_err or load_err or b"").decode(errors="replace").strip().splitlines()
        raise LabError(f"copying {image} to node {n} failed: {said[-1] if said else 'no message'}")


def nodes() -> list[dict]:
    """The swarm's nodes as node 1 sees them: id, hostname, addr, state, availability, role."""
    ids = docker(MANAGER, "node", "ls", "-q").stdout.split()
    found = json.loads(docker(MANAGER, "node", "inspect", *ids).stdout) if ids else []
    return [{"id": node["ID"], "hostname": node["Description"]["Hostname"],
             "addr": node["Status"].get("Addr", ""), "state": node["Status"]["State"],
             "availability": node["Spec"]["Availability"], "role": node["Spec"]["Role"]}
            for node in found]


def wait_nodes_ready() -> list[dict]:
    deadline = time.monotonic() + READY_LIMIT
    while True:
        found = nodes()
        if len(found) == len(NODES) and all(node["state"] == "ready" for node in found):
            return found
        if time.monotonic() >= deadline:
            states = ", ".join(f"{node['hostname']} {node['state']}" for node in found)
            raise LabError(f"not every node was Ready within {READY_LIMIT}s: {states or 'no nodes'}")
        time.sleep(POLL)


def make_swarm() -> None:
    manager = node_addr(MANAGER)
    docker(MANAGER, "swarm", "init", "--advertise-addr", manager,
           "--listen-addr", f"{manager}:{SWARM_PORT}",
           "--default-addr-pool", OVERLAY_POOL, "--default-addr-pool-mask-length", "24")
    token = docker(MANAGER, "swarm", "join-token", "-q", "worker").stdout.strip()
    for n in NODES:
        if n != MANAGER:
            docker(n, "swarm", "join", "--token", token, "--advertise-addr", node_addr(n),
                   "--listen-addr", f"{node_addr(n)}:{SWARM_PORT}", f"{manager}:{SWARM_PORT}",
                   timeout=JOIN_LIMIT)


def up(args) -> int:
    require_root()
    for tool in ("ip", "nsenter", "unshare", "iptables", "mount", "dockerd", "docker"):
        if not shutil.which(tool):
            raise LabError(f"{tool} is missing (apt-get install iproute2 util-linux iptables docker.io)")
    remains = lab_remains()
    if remains:
        raise LabError(f"the lab is already (partly) here ({', '.join(remains)}); "
                       f"run `scripts/swarm_lab.py down` first")
    if run(["docker", "image", "inspect", args.image], env=host_env(), check=False).returncode:
        raise LabError(f"image {args.image} is not on the host's engine (`make nodejs` builds nodejs.org)")
    check_addresses_free()
    global made_something
    started = time.monotonic()
    made_something = True
    LAB_DIR.mkdir(mode=0o700)
    LAB_MADE.write_text(json.dumps({"netns_dir": not Path("/run/netns").exists()}) + "\n")
    storage_driver = pick_storage_driver(args.storage_driver)
    log(f"storage driver {storage_driver}; making {BRIDGE} {HOST_ADDR}/{LAB_NET.prefixlen} and "
        f"namespaces {', '.join(NETNS.format(n) for n in NODES)}")
    make_network()
    chain = add_forward_rule()
    engines = {n: start_dockerd(n, storage_driver) for n in NODES}
    wait_engines(engines)
    log(f"{len(NODES)} dockerds answer ({time.monotonic() - started:.1f}s); copying {args.image}")
    for n in NODES:
        copy_image(args.image, n)
    make_swarm()
    found = wait_nodes_ready()
    took = time.monotonic() - started
    LAB_STATE.write_text(json.dumps({"image": args.image, "storage_driver": storage_driver,
                                     "forward_rule_chain": chain, "up_seconds": round(took, 1),
                                     "nodes": found}, indent=2) + "\n")
    log(f"up in {took:.1f}s: {len(found)} nodes Ready, image {args.image}, storage driver "
        f"{storage_driver}, ACCEPT rule for {BRIDGE} in {chain}")
    print(f"DOCKER_HOST={docker_host(MANAGER)}")
    return 0


# -- status ------------------------------------------------------------------------------------


def status(_args) -> int:
    if not LAB_DIR.exists():
        log(f"the lab is down (no {LAB_DIR})")
        return 1
    answering = engine_answers(MANAGER)
    listed = docker(MANAGER, "node", "ls", check=False) if answering else None
    if listed and listed.returncode == 0:
        print(listed.stdout.rstrip())
    elif listed:
        print(f"node 1 answers but lists no swarm: {listed.stderr.strip()}")
    else:
        print(f"node 1 (the manager) does not answer at {docker_host(MANAGER)}")
    print()
    print(f"{'NODE':<6}{'NAMESPACE':<12}{'ADDRESS':<14}{'DOCKERD':<10}{'ANSWERS':<9}SOCKET")
    for n in NODES:
        pid = lab_dockerd_pid(n)
        print(f"{n:<6}{NETNS.format(n):<12}{node_addr(n):<14}{pid or '-':<10}"
              f"{'yes' if pid and engine_answers(n) else 'no':<9}{docker_host(n)}")
    print()
    print(f"DOCKER_HOST={docker_host(MANAGER)}")
    return 0 if listed and listed.returncode == 0 else 1


# -- demo --------------------------------------------------------------------------------------


def service_tasks() -> list[dict]:
    """The probe service's tasks: id, slot, node id, state, desired state, container id, ports."""
    ids = docker(MANAGER, "service", "ps", PROBE_SERVICE, "-q", "--no-trunc").stdout.split()
    found = json.loads(docker(MANAGER, "inspect", "--type", "task", *ids).stdout) if ids else []
    tasks = []
    for task in found:
        ports = (task["Status"].get("PortStatus") or {}).get("Ports") or []
        tasks.append({
            "id": task["ID"], "slot": task.get("Slot"), "node_id": task.get("NodeID", ""),
            "state": task["Status"]["State"], "desired": task["DesiredState"],
            "container": (task["Status"].get("ContainerStatus") or {}).get("ContainerID", ""),
            # one entry per address family that the port was bound on: the same port twice
            "ports": sorted({p["PublishedPort"] for p in ports
                             if p.get("TargetPort") == CONTAINER_PORT and p.get("PublishedPort")}),
        })
    return tasks


def running_by_slot(tasks: list[dict], on_nodes: set[str]) -> dict[int, dict]:
    """The task of each slot that should run, runs, has its port, on one of `on_nodes`."""
    return {t["slot"]: t for t in tasks
            if t["desired"] == "running" and t["state"] == "running" and t["ports"]
            and t["node_id"] in on_nodes}


class Fetcher:
    """GET http://<node addr>:<published port>/whoami from the host, counted."""

    def __init__(self):
        self.sent = self.failed = 0

    def whoami(self, addr: str, port: int) -> dict | None:
        self.sent += 1
        try:
            with urllib.request.urlopen(f"http://{addr}:{port}/whoami", timeout=FETCH_TIMEOUT) as answer:
                if answer.status == 200:
                    return json.loads(answer.read())
        except (OSError, ValueError):
            pass
        self.failed += 1
        return None

    def task_answers(self, task: dict, addr: str, limit: float = ANSWER_LIMIT) -> float | None:
        """Seconds until the task answered as itself (its container id is its hostname), or None."""
        started = time.monotonic()
        while True:
            answer = self.whoami(addr, task["ports"][0])
            name = str((answer or {}).get("hostname") or "")
            if name and task["container"].startswith(name):
                return time.monotonic() - started
            if time.monotonic() - started >= limit:
                return None
            time.sleep(0.2)


def probe_all(fetcher: Fetcher, by_slot: dict[int, dict], addr_of: dict[str, str],
              name_of: dict[str, str]) -> list[dict]:
    rows = []
    for slot in sorted(by_slot):
        task = by_slot[slot]
        waited = fetcher.task_answers(task, addr_of[task["node_id"]])
        rows.append({"slot": slot, "task": task["id"], "node": name_of[task["node_id"]],
                     "addr": addr_of[task["node_id"]], "port": task["ports"][0],
                     "container": task["container"][:12], "answered": waited is not None,
                     "answer_wait": None if waited is None else round(waited, 2)})
    return rows


def remove_probe() -> None:
    if docker(MANAGER, "service", "inspect", PROBE_SERVICE, check=False).returncode == 0:
        docker(MANAGER, "service", "rm", PROBE_SERVICE)


def demo(args) -> int:
    require_root()
    if not (LAB_DIR.exists() and engine_answers(MANAGER)):
        raise LabError("the lab is not up (node 1 does not answer); run `scripts/swarm_lab.py up` first")
    found = nodes()
    if len(found) != len(NODES) or any(node["state"] != "ready" for node in found):
        states = ", ".join(f"{node['hostname']} {node['state']}" for node in found)
        raise LabError(f"not every node is Ready ({states}); a demo kills node {KILLED_NODE}: "
                       f"run down and up before another")
    state = json.loads(LAB_STATE.read_text()) if LAB_STATE.exists() else {}
    started = time.monotonic()
    fetcher = Fetcher()
    result = {"image": args.image or state.get("image", DEFAULT_IMAGE), "replicas": args.replicas,
              "storage_driver": state.get("storage_driver"), "nodes": found,
              "killed_node": NETNS.format(KILLED_NODE)}
    remove_probe()
    try:
        node_loss(result, fetcher)
    except LabError as e:   # reported with what was seen up to there
        result["error"] = str(e)
    finally:
        removed = time.monotonic()
        try:
            remove_probe()
            wait_for(lambda: not any(probe_containers(n) for n in NODES if n != KILLED_NODE),
                     REMOVE_LIMIT, "the probe service's containers removed")
            result["remove_seconds"] = round(time.monotonic() - removed, 1)
        except LabError as e:
            result["remove_error"] = str(e)
    result["requests_sent"], result["requests_failed"] = fetcher.sent, fetcher.failed
    result["demo_seconds"] = round(time.monotonic() - started, 1)
    result["checks"] = checks(result)
    report = write_report(result, args.results)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(report_text(result).rstrip())
    log(f"report: {report}")
    failed = [name for name, ok in result["checks"].items() if not ok]
    if failed:
        stopped = f" ({result['error']})" if "error" in result else ""
        raise LabError(f"failed checks: {', '.join(failed)}{stopped}")
    log(f"demo passed in {result['demo_seconds']}s")
    return 0


def node_loss(result: dict, fetcher: Fetcher) -> None:
    """The service over all nodes, each task fetched; node 3's dockerd killed; the service over the
    two others, each task fetched. Fills `result` as it goes."""
    replicas = result["replicas"]
    addr_of = {node["id"]: node["addr"] for node in result["nodes"]}
    name_of = {node["id"]: node["hostname"] for node in result["nodes"]}
    killed_id = next((node["id"] for node in result["nodes"] if node["addr"] == node_addr(KILLED_NODE)), "")
    created = time.monotonic()
    # --no-resolve-image: no registry to ask for a digest (every node has the image, loaded)
    docker(MANAGER, "service", "create", "--detach", "--no-resolve-image", "--name", PROBE_SERVICE,
           "--replicas", str(replicas), "--publish", f"mode=host,target={CONTAINER_PORT}",
           "--restart-condition", "any", "--restart-delay", "0s", result["image"])
    by_slot = wait_for(lambda: full(running_by_slot(service_tasks(), set(addr_of)), replicas),
                       CONVERGE_LIMIT, f"{replicas} running tasks")
    result["converge_seconds"] = round(time.monotonic() - created, 1)
    result["before"] = probe_all(fetcher, by_slot, addr_of, name_of)
    result["spread_before"] = dict(Counter(row["node"] for row in result["before"]))
    log(f"{replicas} tasks running in {result['converge_seconds']}s, spread "
        f"{spread_text(result['spread_before'])}; "
        f"{sum(row['answered'] for row in result['before'])} of {replicas} answered")

    # the node loss: node 3's dockerd, SIGKILL, by the pid in its pidfile
    pid = lab_dockerd_pid(KILLED_NODE)
    if pid is None:
        raise LabError(f"node {KILLED_NODE}'s dockerd is not running (pidfile {node_pidfile(KILLED_NODE)})")
    lost = [row for row in result["before"] if row["node"] == NETNS.format(KILLED_NODE)]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    log(f"killed node {KILLED_NODE}'s dockerd (pid {pid}); waiting for the manager to mark it down")
    wait_for(lambda: any(n["id"] == killed_id and n["state"] == "down" for n in nodes()),
             NODE_DOWN_LIMIT, f"{NETNS.format(KILLED_NODE)} marked down")
    result["node_down_seconds"] = round(time.monotonic() - killed, 1)
    survivors = set(addr_of) - {killed_id}
    by_slot = wait_for(lambda: full(running_by_slot(service_tasks(), survivors), replicas),
                       RESCHEDULE_LIMIT, f"{replicas} tasks running on the surviving nodes")
    result["rescheduled_seconds"] = round(time.monotonic() - killed, 1)
    result["after"] = probe_all(fetcher, by_slot, addr_of, name_of)
    result["answered_seconds"] = round(time.monotonic() - killed, 1)
    result["spread_after"] = dict(Counter(row["node"] for row in result["after"]))
    log(f"{NETNS.format(KILLED_NODE)} down after {result['node_down_seconds']}s; every slot running "
        f"on the survivors after {result['rescheduled_seconds']}s, spread "
        f"{spread_text(result['spread_after'])}")
    # the killed engine's containers: their shims outlive dockerd, and the DNAT rules in its
    # namespace still lead to them (these requests are not counted above)
    result["stale_probed"] = len(lost)
    result["stale_answered"] = sum(Fetcher().whoami(row["addr"], row["port"]) is not None for row in lost)


def probe_containers(n: int) -> list[str]:
    return docker(n, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={PROBE_SERVICE}",
                  check=False).stdout.split() if engine_answers(n) else []


def full(by_slot: dict[int, dict], replicas: int) -> dict[int, dict] | None:
    return by_slot if len(by_slot) == replicas else None


def wait_for(condition, limit: float, what: str):
    deadline = time.monotonic() + limit
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"{what}: not within {limit}s")
        time.sleep(POLL)


def spread_text(spread: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(spread.items())) or "none"


def checks(result: dict) -> dict[str, bool]:
    replicas = result["replicas"]
    names = {NETNS.format(n) for n in NODES}
    survivors = names - {result["killed_node"]}
    after = result.get("after", [])
    return {
        "3 nodes Ready": len(result["nodes"]) == len(NODES)
                         and all(n["state"] == "ready" for n in result["nodes"]),
        "tasks on all 3 nodes": set(result.get("spread_before", {})) == names,
        "every task answered": len(result.get("before", [])) == replicas
                               and all(row["answered"] for row in result["before"]),
        "killed node marked down": "node_down_seconds" in result,
        "every slot runs again on the 2 survivors": len(after) == replicas
                                                     and {row["node"] for row in after} <= survivors,
        "every new task answered": len(after) == replicas and all(row["answered"] for row in after),
        "probe service removed": "remove_seconds" in result,
    }


def report_text(r: dict) -> str:
    lines = [f"# swarm lab: {len(r['nodes'])} nodes, {r['replicas']} tasks, node {r['killed_node']} killed",
             "",
             f"`scripts/swarm_lab.py demo` at {r.get('when', '-')}: image {r['image']}, storage driver "
             f"{r.get('storage_driver') or '-'}; {r['demo_seconds']} s in all.",
             "", "| node | address | state at start |", "| --- | --- | --- |"]
    lines += [f"| {n['hostname']} | {n['addr']} | {n['state']} ({n['role']}) |" for n in r["nodes"]]
    for key, title in (("before", "Tasks before the node loss"), ("after", "Tasks after it")):
        if r.get(key):
            lines += ["", f"{title}:", "", "| slot | node | address:port | container | answered |",
                      "| --- | --- | --- | --- | --- |"]
            lines += [f"| {row['slot']} | {row['node']} | {row['addr']}:{row['port']} | "
                      f"{row['container']} | {answered(row)} |" for row in r[key]]
    lines += ["", "Spread per node: before " + spread_text(r.get("spread_before", {})) + "; after "
              + spread_text(r.get("spread_after", {})) + ".", ""]
    timing = [("all tasks running after create", "converge_seconds"),
              ("killed node marked down after the kill", "node_down_seconds"),
              ("every slot running on the survivors after the kill", "rescheduled_seconds"),
              ("every new task answered after the kill", "answered_seconds"),
              ("service removed in", "remove_seconds")]
    lines += [f"- {label}: {r[key]} s" for label, key in timing if key in r]
    lines += [f"- requests sent {r['requests_sent']}, failed {r['requests_failed']} (a running task "
              f"is fetched every 0.2 s until it answers, for up to {ANSWER_LIMIT} s)"]
    if "stale_probed" in r:
        lines += [f"- the killed node's old containers still answering at its address: "
                  f"{r['stale_answered']} of {r['stale_probed']} (the engine died, its containers did not)"]
    for key, what in (("error", "the demo stopped"), ("remove_error", "removing the service")):
        if key in r:
            lines += [f"- {what}: {r[key]}"]
    lines += ["", "Checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}"
                                        for name, ok in r["checks"].items()) + "."]
    return "\n".join(lines) + "\n"


def answered(row: dict) -> str:
    if not row["answered"]:
        return "NO"
    return f"yes, after {row['answer_wait']} s" if row["answer_wait"] >= 0.1 else "yes"


def write_report(result: dict, folder: str | None) -> Path:
    now = datetime.now(timezone.utc)
    result["when"] = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    out = Path(folder) if folder else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"swarm-lab-{now.strftime('%Y%m%dT%H%M%SZ')}.md"
    path.write_text(report_text(result))
    return path


# -- down --------------------------------------------------------------------------------------


def down(_args) -> int:
    require_root()
    started = time.monotonic()
    done: list[str] = []
    problems: list[str] = []

    def step(what: str, action) -> bool:
        try:
            action()
            return True
        except (LabError, OSError) as e:
            problems.append(f"{what}: {e}")
            return False

    for n in sorted(NODES, reverse=True):   # the workers first, the manager last
        if node_socket(n).exists() and lab_dockerd_pid(n) and engine_answers(n):
            if docker(n, "swarm", "leave", "--force", check=False).returncode == 0:
                done.append(f"node {n} left the swarm")
    shim_sockets = [s for n in NODES for s in node_shim_sockets(n)]  # before the data-roots go
    made = json.loads(LAB_MADE.read_text()) if LAB_MADE.exists() else {}
    for n in NODES:
        step(f"stopping node {n}", lambda n=n: done.extend(stop_node(n)))
    step("unmounting", lambda: done.extend(unmount_lab()))
    for n in NODES:
        for folder in node_cgroup_dirs(n):
            step(f"removing cgroup {folder}", lambda folder=folder: remove_cgroup(folder))
    for sock in shim_sockets:
        step(f"removing {sock}", lambda sock=sock: sock.unlink(missing_ok=True))
    # the host ends of the veths first (each takes its pair along), then the bridge, then the
    # namespaces: a veth deleted with its namespace goes a moment later, on its own
    for link in [*(VETH_HOST.format(n) for n in NODES), BRIDGE]:
        if link_exists(link):
            if step(f"deleting {link}", lambda link=link: delete_link(link)):
                done.append(f"deleted link {link}")
    namespaces = run(["ip", "netns", "list"], check=False).stdout.split()
    for n in NODES:
        if NETNS.format(n) in namespaces:
            if step(f"deleting {NETNS.format(n)}", lambda n=n: run(["ip", "netns", "del", NETNS.format(n)])):
                done.append(f"deleted namespace {NETNS.format(n)}")
    if made.get("netns_dir") and step("removing /run/netns", remove_netns_dir):
        done.append("removed /run/netns (`ip netns add` made it for the lab)")
    for chain in FORWARD_CHAINS:
        for _ in range(10):   # the lab adds it once; more would be a failed up run again
            if run(["iptables", "-C", chain, *FORWARD_RULE], check=False).returncode:
                break
            if not step(f"deleting the rule in {chain}",
                        lambda chain=chain: run(["iptables", "-D", chain, *FORWARD_RULE])):
                break
            done.append(f"deleted the ACCEPT rule for {BRIDGE} in {chain}")
    if LAB_DIR.exists():
        if step(f"removing {LAB_DIR}", lambda: shutil.rmtree(LAB_DIR)):
            done.append(f"removed {LAB_DIR}")
    for line in done:
        log(line)
    left = lab_remains()
    if problems or left:
        for problem in problems:
            log(problem)
        raise LabError(f"down left {', '.join(left) or 'errors (above)'}")
    log(f"the lab is down ({time.monotonic() - started:.1f}s)" if done else "nothing of the lab was here")
    return 0


def link_exists(link: str) -> bool:
    return run(["ip", "link", "show", link], check=False).returncode == 0


def delete_link(link: str) -> None:
    if run(["ip", "link", "del", link], check=False).returncode and link_exists(link):
        raise LabError(f"`ip link del {link}` failed")


def remove_netns_dir() -> None:
    """/run/netns, when the lab's `ip netns add` made it (a folder bind-mounted on itself, shared),
    and no namespace is named in it any more."""
    netns_dir = Path("/run/netns")
    if not netns_dir.is_dir() or any(netns_dir.iterdir()):
        return
    mounted = any(line.split()[4] == str(netns_dir)
                  for line in Path("/proc/self/mountinfo").read_text().splitlines())
    if mounted:
        run(["umount", "-n", str(netns_dir)])
    netns_dir.rmdir()


def node_shim_sockets(n: int) -> list[Path]:
    """The sockets of node N's shims: containerd names them sha256(<its address>/<namespace>/<id>);
    a shim killed with its node leaves its socket behind."""
    address = node_dir(n) / "exec" / "containerd" / "containerd.sock"
    containers = node_dir(n) / "data" / "containers"
    ids = [c.name for c in containers.iterdir()] if containers.is_dir() else []
    found = [SHIM_SOCKETS / hashlib.sha256(f"{address}/moby/{cid}".encode()).hexdigest() for cid in ids]
    return [sock for sock in found if sock.exists()]


def stop_node(n: int) -> list[str]:
    """Node N's dockerd by its pidfile (SIGTERM: it stops its containers; SIGKILL if it hangs),
    then what a killed one leaves: its containers' processes (its cgroup), its containerd and
    shims (its namespace)."""
    done = []
    pid = lab_dockerd_pid(n)
    if pid:
        signal_all([pid], signal.SIGTERM)
        if wait_gone([pid], STOP_LIMIT):
            signal_all([pid], signal.SIGKILL)
            if wait_gone([pid], KILL_LIMIT):
                raise LabError(f"dockerd {pid} did not exit after SIGKILL")
        done.append(f"stopped node {n}'s dockerd (pid {pid})")
    for what, pids in (("container processes", cgroup_pids(n)),
                       ("engine processes", netns_engine_pids(n))):
        if pids:
            signal_all(pids, signal.SIGKILL)
            if wait_gone(pids, KILL_LIMIT):
                raise LabError(f"{what} {pids} of node {n} did not exit after SIGKILL")
            done.append(f"killed node {n}'s leftover {what} ({len(pids)})")
    return done


def unmount_lab() -> list[str]:
    """Mounts under the lab folder in the host's mount namespace (the nodes mount in their own,
    which goes with their processes): none are expected; the deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")   # \040 and the like
        if point == str(LAB_DIR) or point.startswith(f"{LAB_DIR}/"):
            points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if run(["umount", "-n", point], check=False).returncode:
            run(["umount", "-n", "-l", point])
    return [f"unmounted {point}" for point in points]


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swarm_lab.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="make the lab: 3 dockerds in namespaces, one swarm")
    up_parser.add_argument("--image", default=DEFAULT_IMAGE,
                           help="image copied to every node (default %(default)s)")
    up_parser.add_argument("--storage-driver", choices=("auto", "overlay2", "vfs"), default="auto",
                           help="the nodes' storage driver; auto: overlay2 where the lab folder can hold it")
    commands.add_parser("status", help="the nodes and where each lab socket is")
    demo_parser = commands.add_parser("demo", help="a service over the nodes, node 3 killed, a report")
    demo_parser.add_argument("--image", help="the service's image (default: the one up copied)")
    demo_parser.add_argument("--replicas", type=int, default=PROBE_REPLICAS, help="default %(default)s")
    demo_parser.add_argument("--results", help=f"folder for the report (default {RESULTS})")
    demo_parser.add_argument("--json", help="also write the measurements to this file, as JSON")
    commands.add_parser("down", help="remove everything the lab made")
    args = parser.parse_args(argv)
    if getattr(args, "replicas", len(NODES)) < len(NODES):
        parser.error(f"--replicas must be at least {len(NODES)} (a task on every node)")
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    try:
        return {"up": up, "status": status, "demo": demo, "down": down}[args.command](args)
    except LabError as e:
        if e.details:
            print(e.details, file=sys.stderr)
        log(f"{args.command}: {e}")
        code = 1
    except KeyboardInterrupt:
        log(f"{args.command}: interrupted")
        code = 130
    if made_something:
        log(LEFT_HINT)
    return code


if __name__ == "__main__":
    sys.exit(main())
