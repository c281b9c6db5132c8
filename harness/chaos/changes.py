"""--changes: the fixed sequence of live changes through nmc's admin API (scale, rollout), the
second image it rolls out, and the replicas looked at around each change."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import docker
import requests

from nmc.admin_auth import token_path

from harness.chaos.common import (ADMIN_CONNECT, LABEL_CHAOS, SITE_IMAGE, SWARM_CONVERGE_LIMIT,
                                  SWARM_GONE_POLL, failure_kind, short_id)
from harness.cleanup import cluster_containers, container_name


@dataclass
class Change:
    """One phase of --changes: its call to the admin API (none for the steady phase), and what
    it should leave: `replicas` running replicas, all of `image`."""
    title: str
    path: str = ""
    body: dict = field(default_factory=dict)
    replicas: int = 0
    image: str = ""
    # filled in when it runs; t = seconds since the load began
    started: float | None = None
    answered: float | None = None
    ended: float | None = None      # when the next phase began, or the load ended
    status: int | None = None
    message: str = ""
    error: str = ""
    before: list = field(default_factory=list)   # [(name, container id, image id)], running ones
    after: list = field(default_factory=list)
    check: str = ""                 # what differs from what it should leave; "" when nothing
    converged: float | None = None  # --swarm: when the replicas were as expected (t), if after the answer

    @property
    def took(self) -> float | None:
        return None if self.started is None or self.answered is None else self.answered - self.started

    @property
    def call(self) -> str:
        return f"POST {self.path} {json.dumps(self.body)}" if self.path else "no call"


def changes_sequence(derived: str) -> list[Change]:
    """Phase 0 is the steady load before the first change; the rest are the fixed changes."""
    return [
        Change("steady load, no change", replicas=2, image=SITE_IMAGE),
        Change("scale 2 → 6", "/scale", {"replicas": 6}, 6, SITE_IMAGE),
        Change("scale 6 → 1", "/scale", {"replicas": 1}, 1, SITE_IMAGE),
        Change("scale 1 → 2", "/scale", {"replicas": 2}, 2, SITE_IMAGE),
        Change(f"rollout to {derived}", "/rollout", {"image": derived}, 2, derived),
        Change(f"rollout back to {SITE_IMAGE}, max_surge 2", "/rollout",
               {"image": SITE_IMAGE, "max_surge": 2}, 2, SITE_IMAGE),
    ]


def build_derived(client: docker.DockerClient, cluster: str) -> tuple[str, str]:
    """A second image to roll out: the site's image plus one label (a new image id, no new
    layer, no registry); its tag and id. The label names the run, so no cache of another run's
    build is reused and remove_derived finds it again even untagged."""
    tag = f"{cluster}:changes"
    dockerfile = f"FROM {SITE_IMAGE}\nLABEL {LABEL_CHAOS}={cluster}\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True,
                                   pull=False, timeout=120)
    return tag, image.id


def remove_derived(client: docker.DockerClient, cluster: str) -> list[str]:
    """Remove the image(s) built by this run (labelled nmc.chaos=<cluster>); what was removed."""
    removed = []
    for image in client.images.list(all=True, filters={"label": f"{LABEL_CHAOS}={cluster}"}):
        if image.labels.get(LABEL_CHAOS) != cluster:  # belt and braces
            continue
        client.images.remove(image.id, force=True)  # force: untag all of its (our) tags
        removed.append(f"{', '.join(image.tags) or 'untagged'} ({short_id(image.id)})")
    return removed


class Changes:
    """Sends the changes to nmc's admin port, one at a time, and looks at the replicas around each."""

    def __init__(self, client: docker.DockerClient, cluster: str, admin_url: str, image_ids: dict):
        self.client, self.cluster, self.admin_url, self.image_ids = client, cluster, admin_url, image_ids
        self.session = requests.Session()
        self.session.trust_env = False
        # nmc makes the cluster's admin token in the run directory as its admin interface starts
        deadline = time.monotonic() + 10
        while not token_path(cluster).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.session.headers["Authorization"] = "Bearer " + token_path(cluster).read_text().strip()

    def replicas(self) -> list[tuple[str, str, str]]:
        """(name, container id, image id) of the cluster's running containers, by name."""
        return sorted((container_name(c), c["Id"][:12], short_id(c.get("ImageID", "")))
                      for c in cluster_containers(self.client, self.cluster) if c.get("State") == "running")

    def call(self, change: Change, limit: float) -> None:
        """The change's POST; it answers when the change is done (or failed)."""
        try:
            answer = self.session.post(self.admin_url + change.path, json=change.body,
                                       timeout=(ADMIN_CONNECT, limit))
        except requests.exceptions.RequestException as e:
            change.error = f"{failure_kind(e)}: {str(e)[:200]}"
            return
        change.status = answer.status_code
        try:
            data = answer.json()
        except ValueError:
            data = {"error": f"not JSON: {answer.text[:160]!r}"}
        if answer.status_code == 200 and isinstance(data, dict) and "message" in data:
            change.message = str(data["message"])
        else:
            change.error = f"HTTP {answer.status_code}: {data.get('error') if isinstance(data, dict) else data}"

    def check(self, change: Change) -> str:
        want = short_id(self.image_ids[change.image])
        found = Counter(image for _, _, image in change.after)
        if len(change.after) == change.replicas and set(found) == {want}:
            return ""
        return (f"expected {change.replicas} replica(s) of {change.image} ({want}), found "
                f"{describe_replicas(change.after)}")

    def converge(self, change: Change, began: float) -> None:
        """--swarm: nmc answers a change once its rotation is as asked; Swarm stops the tasks it
        retired (a scale-down, an update's old tasks) a moment later: wait for the replicas to be
        as expected, SWARM_CONVERGE_LIMIT seconds at most (what is left then fails the check)."""
        deadline = time.monotonic() + SWARM_CONVERGE_LIMIT
        for _ in range(int(SWARM_CONVERGE_LIMIT / SWARM_GONE_POLL) + 1):
            if time.monotonic() >= deadline:
                break
            time.sleep(SWARM_GONE_POLL)
            change.after = self.replicas()
            change.check = self.check(change)
            if not change.check:
                change.converged = time.monotonic() - began
                return
        change.check += f" (still, {SWARM_CONVERGE_LIMIT:g} s after the answer)"

    def close(self) -> None:
        self.session.close()


def describe_replicas(replicas: list) -> str:
    """'2 × e1b2332aa912' (or '1 × a…, 1 × b…'; 'none')."""
    found = Counter(image for _, _, image in replicas)
    return ", ".join(f"{n} × {image}" for image, n in sorted(found.items())) or "none"


