"""Config validation and option parsing: pure logic."""

import subprocess
import sys

import pytest

from conftest import ROOT
from nmc import __version__
from nmc.cli import parse_args
from nmc.config import Config
from nmc.errors import UsageError


def test_defaults_match_the_original():
    config = parse_args([])
    assert (config.port, config.replicas, config.base_port) == (3000, 2, 3001)
    assert (config.image, config.container_port, config.name) == ("nodejs.org", 8080, "nmc")
    assert (config.check_interval, config.health_path) == (5.0, "/healthz")
    assert config.replica_ports == [3001, 3002]
    assert config.replica_name(3002) == "nmc-3002"
    assert not config.quiet and not config.keep


def test_options_reach_the_config():
    config = parse_args(["-p", "8000", "-n", "4", "--base-port", "9001", "--image", "site:2",
                         "--container-port", "80", "--name", "shop", "--health-path", "/up",
                         "--check-interval", "0.5", "-q", "--keep"])
    assert config == Config(port=8000, replicas=4, base_port=9001, image="site:2", container_port=80,
                            name="shop", health_path="/up", check_interval=0.5, quiet=True, keep=True,
                            admin_port=8100)  # (the cluster's own + 100)
    assert config.replica_ports == [9001, 9002, 9003, 9004]


@pytest.mark.parametrize("argv, message", [
    (["-n", "0"], "--replicas must be from 1 to 64, not 0"),
    (["-n", "two"], "--replicas must be a whole number, not 'two'"),
    (["-p", "70000"], "--port must be a port number from 1 to 65535, not 70000"),
    (["--check-interval", "abc"], "--check-interval must be a number of seconds, not 'abc'"),
    (["--check-interval", "0"], "--check-interval must be more than 0 seconds"),
    (["--check-interval", "nan"], "--check-interval must be a number of seconds, not 'nan'"),
    (["--base-port", "65535"], "--base-port 65535 with 2 replicas needs ports up to 65536"),
    (["-p", "3002", "--base-port", "3001"], "--port 3002 falls inside the replicas' ports 3001-3002"),
    (["--name", "a/b"], "--name 'a/b' is not a valid container name"),
    (["--health-path", "healthz"], "--health-path must start with '/'"),
    (["--bogus"], "unknown option --bogus"),
    (["-qz"], "unknown option -z"),
    (["extra"], "unexpected argument 'extra'"),
    (["--port"], "--port requires argument"),
    (["-p", "1", "-p", "2"], "an option is given twice"),
    (["--swarm", "--base-port", "4001"], "--base-port does not apply with --swarm"),
    (["--max-body-size", "lots"], "--max-body-size must be a size such as 10m, 512k or 4096"),
    (["--max-body-size", "10x"], "--max-body-size must be a size"),
    (["--cap-add", "FLY"], "--cap-add 'FLY': no such capability"),
    (["--memory", "lots"], "--memory must be a size such as 10m"),
    (["--memory", "1m"], "--memory 1048576 bytes is below Docker's least, 6m"),
    (["--cpus", "half"], "--cpus must be a number of CPUs, not 'half'"),
    (["--cpus", "-1"], "--cpus must be a number of CPUs such as 0.5 or 2, not -1"),
    (["--cpus", "nan"], "--cpus must be a number of CPUs, not 'nan'"),
    (["--network", "no such"], "--network 'no such': not a Docker network name"),
    (["--volume", "data"], "--volume 'data': expected SOURCE:TARGET or SOURCE:TARGET:ro"),
    (["--volume", "data:/d:rx"], "--volume 'data:/d:rx': the mode must be ro or rw, not 'rx'"),
    (["--volume", "data:d"], "--volume 'data:d': the path in the container must be absolute"),
    (["--volume", "my data:/d"], "'my data' is neither a volume name nor a path"),
    (["--volume", "aa:/d", "--volume", "bb:/d"], "two volumes mount at the same path"),
])
def test_bad_options_give_one_line(argv, message):
    with pytest.raises(UsageError) as error:
        parse_args(argv)
    assert message in str(error.value)
    assert "\n" not in str(error.value)
    assert error.value.exit_code == 2


@pytest.mark.parametrize("given, size", [("4096", 4096), ("512k", 512 * 1024), ("10m", 10 << 20),
                                         ("1G", 1 << 30), ("64KB", 64 << 10), ("0", 0)])
def test_body_sizes_read_as_nginx_writes_them(given, size):
    assert parse_args(["--max-body-size", given]).max_body_size == size


def test_the_replicas_and_admin_ports_follow_the_clusters_own_port_unless_given():
    assert parse_args([]).replica_ports == [3001, 3002]  # as the original
    assert parse_args([]).admin_port == 3100
    assert parse_args(["-p", "4000", "-n", "3"]).replica_ports == [4001, 4002, 4003]
    assert parse_args(["-p", "4000"]).admin_port == 4100
    assert parse_args(["-p", "4000", "--admin-port", "0"]).admin_port == 0
    assert parse_args(["-p", "4000", "--base-port", "5000"]).replica_ports == [5000, 5001]
    assert parse_args(["--swarm", "-p", "4000"]).base_port == 3001  # unused: Swarm picks ports


def test_limits_read_as_docker_writes_them():
    config = parse_args(["--memory", "256m", "--cpus", "1.5"])
    assert (config.memory, config.cpus) == (256 << 20, 1.5)
    assert (parse_args([]).memory, parse_args([]).cpus) == (0, 0.0)  # no limit by default


def test_networks_and_volumes_read_as_docker_writes_them(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    config = parse_args(["--network", "backend", "--network", "cache", "--network", "backend",
                         "--volume", "pgdata:/var/lib/data", "--volume", "./uploads:/up:ro",
                         "--volume", "/srv/static:/static:rw"])
    assert config.network == ("backend", "cache")
    assert config.volume == ("pgdata:/var/lib/data:rw", f"{tmp_path}/uploads:/up:ro",
                             "/srv/static:/static:rw")  # a folder here made absolute, as compose does
    assert Config.from_env({"NMC_NETWORK": "a,b", "NMC_VOLUME": "vv:/v\n/h:/h:ro"}).volume == \
        ("vv:/v:rw", "/h:/h:ro")


def test_environment_settings_for_gunicorn():
    config = Config.from_env({"NMC_REPLICAS": "3", "NMC_PORT": "8080", "NMC_QUIET": "yes",
                              "UNRELATED": "x"})
    assert (config.replicas, config.port, config.quiet) == (3, 8080, True)
    with pytest.raises(UsageError, match="--replicas must be a whole number"):
        Config.from_env({"NMC_REPLICAS": "many"})


def run_script(*args):
    return subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), *args],
                          capture_output=True, text=True, timeout=30)


def test_version_and_help():
    version = run_script("--version")
    assert (version.returncode, version.stdout) == (0, f"nmc-server {__version__}\n")
    assert run_script("-v").stdout == version.stdout
    help_text = run_script("-h")
    assert help_text.returncode == 0
    assert "Usage:" in help_text.stdout and "--check-interval SECONDS" in help_text.stdout


def test_a_bad_option_exits_2_with_one_line_and_no_traceback():
    result = run_script("-n", "0")
    assert result.returncode == 2
    assert result.stderr == "nmc-server: error: --replicas must be from 1 to 64, not 0\n"
    assert result.stdout == ""


def test_the_readme_shows_the_usage_text_as_it_is():
    from nmc.cli import USAGE

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert USAGE in readme, "README.md's copy of `nmc_server.py -h` is out of date"


def test_the_launcher_run_without_gevent_says_what_to_do(tmp_path):
    """./nmc_server.py run by a Python without the dependencies and no .venv beside it: one line."""
    import shutil

    launcher = tmp_path / "nmc_server.py"
    shutil.copy(ROOT / "nmc_server.py", launcher)
    result = subprocess.run([sys.executable, "-S", str(launcher), "--version"],  # -S: no site-packages
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("nmc-server: error: gevent is not installed for ")
    assert "make run" in result.stderr and "Traceback" not in result.stderr


def test_replica_environment_from_env_file_then_e_options(tmp_path, monkeypatch):
    env_file = tmp_path / "site.env"
    env_file.write_text("# settings\nGREETING=hello\nMODE=file\n\nFROM_NMC\nEMPTY=\n")
    monkeypatch.setenv("FROM_NMC", "inherited")
    config = parse_args(["--env-file", str(env_file), "-e", "MODE=cli", "--env", "URL=a=b"])
    assert config.replica_env == {"GREETING": "hello", "MODE": "cli", "FROM_NMC": "inherited",
                                  "EMPTY": "", "URL": "a=b", "PORT": "8080"}
    assert parse_args(["--container-port", "9000"]).replica_env == {"PORT": "9000"}
    assert Config.from_env({"NMC_ENV": "A=1\nB=2"}).replica_env == {"A": "1", "B": "2", "PORT": "8080"}


@pytest.mark.parametrize("argv, message", [
    (["-e", "NOEQUALS-SIGN"], "-e 'NOEQUALS-SIGN': expected KEY=VALUE"),
    (["-e", "=value"], "expected KEY=VALUE"),
    (["-e", "PORT=1234"], "PORT=1234 in the replicas' environment differs from --container-port 8080"),
    (["--env-file", "/nonexistent/site.env"], "--env-file /nonexistent/site.env: No such file"),
])
def test_bad_replica_environment_gives_one_line(argv, message):
    with pytest.raises(UsageError) as error:
        parse_args(argv)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_with_swarm_the_hosts_ports_are_not_the_replicas():
    assert parse_args(["--swarm", "-p", "3002"]).port == 3002  # no replica holds a host port
