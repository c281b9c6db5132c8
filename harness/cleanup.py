"""A cluster's containers, found by nmc's label (nmc.cluster=NAME), and their removal; the swarm
service of the same name. Through the Docker SDK, on the engine DOCKER_HOST names."""

from __future__ import annotations

from typing import Callable

import docker
import docker.errors
import requests.exceptions

from nmc.admin_auth import token_path
from nmc.admin_socket import socket_path
from nmc.containers import LABEL_CLUSTER

ENGINE_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


def engine(timeout: float = 10) -> docker.DockerClient:
    return docker.from_env(timeout=timeout)


def container_name(summary: dict) -> str:
    return (summary.get("Names") or ["/?"])[0].lstrip("/")


def cluster_containers(client: docker.DockerClient, cluster: str, label: str = LABEL_CLUSTER) -> list[dict]:
    """The cluster's containers (any state) as the engine lists them: Id, Names, State, Labels."""
    return client.api.containers(all=True, filters={"label": f"{label}={cluster}"})


def remove_cluster(client: docker.DockerClient, cluster: str, labels: tuple[str, ...] = (LABEL_CLUSTER,),
                   warn: Callable[[str], None] | None = None) -> list[str]:
    """Force-remove every container labelled label=cluster, for each of `labels`; their names,
    ids and states. A paused container that will not go is unpaused first; one that still will
    not go is passed to `warn` (else ignored). The admin token nmc made for the cluster goes too,
    and its admin socket (nmc removes them itself when it stops, not when it is killed)."""
    removed = []
    for label in labels:
        for summary in cluster_containers(client, cluster, label):
            if (summary.get("Labels") or {}).get(label) != cluster:  # belt and braces
                continue
            removed.append(f"{container_name(summary)} ({summary['Id'][:12]}, {summary.get('State')})")
            _force_remove(client, summary, warn)
    token_path(cluster).unlink(missing_ok=True)
    socket_path(cluster).unlink(missing_ok=True)  # a killed nmc's, stale
    return removed


def _force_remove(client: docker.DockerClient, summary: dict, warn) -> None:
    try:
        client.api.remove_container(summary["Id"], force=True)
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS:
        try:  # a paused container that would not go: unpause, then again
            client.api.unpause(summary["Id"])
            client.api.remove_container(summary["Id"], force=True)
        except docker.errors.NotFound:
            pass
        except ENGINE_ERRORS as e:
            if warn is not None:
                warn(f"could not remove {container_name(summary)}: {e}")


def remove_service(client: docker.DockerClient, cluster: str, by: str) -> str:
    """The swarm service `cluster` (nmc --swarm), if it is still there and carries nmc's label
    of that cluster: removed. What was done ("removed by BY"), "" when it was gone."""
    try:
        service = client.api.inspect_service(cluster)
    except docker.errors.NotFound:
        return ""
    if (service.get("Spec", {}).get("Labels") or {}).get(LABEL_CLUSTER) != cluster:  # belt and braces
        return f"left alone: it has no label {LABEL_CLUSTER}={cluster}"
    try:
        client.api.remove_service(service["ID"])
    except docker.errors.NotFound:
        pass
    return f"removed by {by}"
