"""What the tests (tests/conftest.py), the benchmark (bench/) and the chaos run (scripts/chaos.py,
harness/chaos/) share: free ports, child processes, /proc readers, a load of client threads and
the removal of a cluster's containers. Not installed by setup.py: run from the repository."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository: nmc_server.py, nmc/, bench/ ...
