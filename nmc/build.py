"""`--build DIR`: the user's own app folder made into the replicas' image.

A folder with a Dockerfile is built as it is. A Node.js app folder without one (a package.json)
is built on the project's Node.js base image with a Dockerfile made here: the app copied to
/app, its production dependencies installed when it declares some and has no node_modules, and
`npm start` as the command. Either way the build's output is logged line by line.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from nmc.containers import Engine, ImageMissing
from nmc.errors import UsageError

log = logging.getLogger(__name__)

# The project's Node.js bases, in order of preference: the official image when this engine has
# it, else the one `make nodejs` makes from this machine's Node.js (nodejs/make-base-image.sh).
NODE_BASES = ("node:20-slim", "nmc-node-base:20")

GENERATED_DOCKERFILE = """\
# made by nmc-server --build for a Node.js app folder without a Dockerfile
FROM {base}
WORKDIR /app
COPY . /app
{install}ENV HOME=/tmp NODE_ENV=production NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false
USER 1000:1000
CMD ["npm", "start"]
"""


def build_app(engine: Engine, folder: str, tag: str) -> str:
    """Build `folder` into the image `tag`; its id."""
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"--build {folder}: no such folder")
    if (path / "Dockerfile").is_file():
        log.info("building %s from its Dockerfile as %s", folder, tag)
        return engine.build(str(path), tag, progress=_show)
    if not (path / "package.json").is_file():
        raise UsageError(f"--build {folder}: neither a Dockerfile nor a package.json in it")
    dockerfile = node_app_dockerfile(path, _node_base(engine))
    with tempfile.TemporaryDirectory(prefix="nmc-build-") as scratch:
        generated = Path(scratch) / "Dockerfile"
        generated.write_text(dockerfile, encoding="utf-8")
        log.info("building %s (a Node.js app, no Dockerfile: `npm start`) as %s", folder, tag)
        return engine.build(str(path), tag, dockerfile=str(generated), progress=_show)


def node_app_dockerfile(path: Path, base: str) -> str:
    """The Dockerfile for a Node.js app folder; UsageError when `npm start` has nothing to run."""
    try:
        package = json.loads((path / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"--build {path}: package.json cannot be read ({e})") from None
    if not isinstance(package, dict):
        raise UsageError(f"--build {path}: package.json is not a JSON object")
    scripts = package.get("scripts") if isinstance(package.get("scripts"), dict) else {}
    if "start" not in scripts and not (path / "server.js").is_file():
        raise UsageError(f"--build {path}: package.json has no \"start\" script and there is no "
                         "server.js: nmc runs the app with `npm start`")
    needs_install = bool(package.get("dependencies")) and not (path / "node_modules").is_dir()
    install = "RUN npm install --omit=dev --no-audit --no-fund\n" if needs_install else ""
    return GENERATED_DOCKERFILE.format(base=base, install=install)


def _node_base(engine: Engine) -> str:
    for base in NODE_BASES:
        try:
            engine.image_id(base)
            return base
        except ImageMissing:
            continue
    raise ImageMissing(f"no Node.js base image on this Docker engine ({' or '.join(NODE_BASES)}): "
                       "run `make nodejs`, which makes one, or `docker pull node:20-slim`")


def _show(line: str) -> None:
    log.info("build: %s", line)
